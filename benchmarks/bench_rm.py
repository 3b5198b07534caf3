"""Throughput of the reward-model service against the same model in-process and a naive per-request server.

Builds a Llama-style reward model (hidden 384, 6 layers, MLP 1536, the tests' tiny BPE tokenizer; 14.3M
parameters, 14.2M of them outside the embedding) in a temporary directory and starts the service the way
it is deployed -- ``cgpo rm serve`` alone (embedded), or redis-server + ``cgpo rm serve`` + one
``cgpo rm worker`` (queue) -- then drives it with ``--clients`` closed-loop aiohttp clients:

1. 256-token items, 1- and 8-item requests on ``/v1/score``: service items/s vs in-process
   ``RewardModel.score`` on batches of 1, 8 and 32 (target: service >= 85% of in-process batch 32);
2. 32-token items, 1-item requests on OpenRLHF's ``/get_reward`` protocol: service vs a naive server
   that tokenizes and runs the forward inside each request, as OpenRLHF's ``serve_rm`` does (no
   batching across requests; target: >= 2x), and in-process batch 1 vs batch 32;
3. the same 32-token (prompt, response) pairs, 16 per prompt, scored raw and calibrated against cached
   baselines (baselines warmed once first; target: raw/calibrated items/s <= 1.1).

Other work on the machine moves every figure, so each is measured ``--repeats`` times and reported as
median [min-max], and each ratio is taken between runs next to each other in time: a service run
against the mean of the baseline runs just before and just after it (in-process batch 32 for 1., the
naive server for 2.), raw against calibrated on the same stack for 3. Each run also records the CPU
cores used by the load generator, gateway, worker and Redis, and by everything else on the machine
(``others``), so a figure taken while another job held a core shows it; ``items/CPU-s`` (items per
CPU-second of the benchmark's own processes) is the load-independent view of the same run.

    .venv/bin/python benchmarks/bench_rm.py                 # 3 repeats of 15 s windows (~25 min on 2 cores)
    .venv/bin/python benchmarks/bench_rm.py --quick         # one repeat of 6 s windows (~4 min)

Needs the ``bench`` extra (aiohttp) and ``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi import FastAPI, Request  # noqa: E402 - module level: the naive app's annotations resolve here

from benchmarks.stack import CpuMeter, Stack, closed_loop, service_env  # noqa: E402

MODEL_NAME = "bench"
NAIVE_PATH_ENV = "BENCH_RM_NAIVE_MODEL"
NAIVE_DTYPE_ENV = "BENCH_RM_NAIVE_DTYPE"
NAIVE_DEVICE_ENV = "BENCH_RM_NAIVE_DEVICE"


# ---------------------------------------------------------------- the naive per-request server


def naive_app() -> Any:
    """OpenRLHF ``serve_rm``'s shape: ``POST /get_reward`` tokenizes the request's texts and runs the model
    forward right in the request handler, so requests are scored one at a time, never batched together.

    Started as ``uvicorn benchmarks.bench_rm:naive_app --factory`` with the model directory in
    ``$BENCH_RM_NAIVE_MODEL`` (and optionally ``$BENCH_RM_NAIVE_DTYPE``, ``$BENCH_RM_NAIVE_DEVICE``:
    float32 on the CPU by default).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = os.environ[NAIVE_PATH_ENV]
    dtype = getattr(torch, os.environ.get(NAIVE_DTYPE_ENV, "float32"))
    device = os.environ.get(NAIVE_DEVICE_ENV, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype).to(device).eval()
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/get_reward")
    async def get_reward(request: Request) -> dict[str, Any]:
        data = await request.json()
        # the texts are chat-formatted (the template wrote the BOS): no second one, as the service reads them
        batch = tokenizer(data["query"], padding=True, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.inference_mode():
            rewards = model(**batch).logits[:, 0].float().tolist()
        return {"rewards": rewards, "scores": rewards}

    return app


# ---------------------------------------------------------------- model and workload


def build_reward_model(out_dir: Path, hidden: int, layers: int, intermediate: int, heads: int) -> dict[str, Any]:
    from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, kind="sequence-classification", hidden_size=hidden, num_layers=layers,
                        num_heads=heads, intermediate_size=intermediate, initializer_range=0.2)
    save_tiny_model(out_dir, tokenizer=tokenizer, model=model)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"path": str(out_dir), "parameters": params, "non_embedding_parameters": params - embedding,
            "vocab": len(tokenizer), "hidden": hidden, "layers": layers, "intermediate": intermediate,
            "heads": heads}


class Workload:
    """Distinct (prompt, response[, baseline]) items of an exact token length, for one loaded RewardModel."""

    def __init__(self, rm: Any, seed: int = 0) -> None:
        from tests.tiny_models import corpus

        self.rm, self.tok = rm, rm.tokenizer
        self.rng = random.Random(seed)
        vocab = sorted({w.strip(".?!:,") for line in corpus() for w in line.split()} - {""})
        # words that are exactly one token after a space: adding one adds exactly one token
        self.words = [w for w in vocab if len(self.tok(" " + w, add_special_tokens=False).input_ids) == 1]

    def _sentence(self, n: int) -> str:
        return " ".join(self.rng.choice(self.words) for _ in range(n))

    def _fit(self, length: Callable[[str], int], target: int) -> str:
        """A response whose item encodes to exactly ``target`` tokens (words after the first add one each)."""
        words = [self.rng.choice(self.words) for _ in range(target + 1)]
        n = max(1, target // 2)
        for _ in range(8):
            got = length(" ".join(words[:n]))
            if got == target:
                return " ".join(words[:n])
            n = min(len(words), max(1, n + target - got))
        raise RuntimeError(f"could not build a {target}-token item (got {got})")

    def pairs(self, n: int, tokens: int, *, per_prompt: int = 1, baselines: bool = False) -> list[dict[str, Any]]:
        """``n`` /v1/score items of ``tokens`` tokens; ``per_prompt`` responses share a prompt (and baseline)."""
        items: list[dict[str, Any]] = []
        seen: set[tuple[int, ...]] = set()
        prompt_words = max(2, tokens // 5)
        while len(items) < n:
            prompt = self._sentence(prompt_words) + "?"
            baseline = self._fit(lambda r, p=prompt: len(self.rm.encode(p, r).ids), tokens)
            for _ in range(per_prompt):
                response = self._fit(lambda r, p=prompt: len(self.rm.encode(p, r).ids), tokens)
                ids = self.rm.encode(prompt, response).ids
                if ids in seen:
                    continue
                seen.add(ids)
                item = {"prompt": prompt, "response": response}
                if baselines:
                    item["baseline"] = baseline
                items.append(item)
        return items[:n]

    def texts(self, n: int, tokens: int) -> list[str]:
        """``n`` distinct pre-formatted texts (OpenRLHF's ``query``) of ``tokens`` tokens as the service encodes
        them."""
        def chat(prompt: str, response: str) -> str:
            return self.tok.apply_chat_template([{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": response}], tokenize=False)

        out: list[str] = []
        seen: set[str] = set()
        while len(out) < n:
            prompt = self._sentence(max(2, tokens // 5)) + "?"
            response = self._fit(lambda r, p=prompt: len(self.rm.encode_text(chat(p, r)).ids), tokens)
            text = chat(prompt, response)
            if text not in seen:
                seen.add(text)
                out.append(text)
        return out

    def sequences(self, items: Sequence[dict[str, Any]]) -> list[tuple[int, ...]]:
        return [self.rm.encode(i["prompt"], i["response"]).ids for i in items]


def score_bodies(items: Sequence[dict[str, Any]], per_request: int) -> list[bytes]:
    return [json.dumps({"model": MODEL_NAME, "items": list(items[i : i + per_request])}).encode()
            for i in range(0, len(items) - per_request + 1, per_request)]


def reward_bodies(texts: Sequence[str]) -> list[bytes]:
    return [json.dumps({"query": [t]}).encode() for t in texts]


# ---------------------------------------------------------------- in-process


def in_process(rm: Any, sequences: Sequence[tuple[int, ...]], batch: int, duration_s: float) -> dict[str, Any]:
    """items/s of ``rm.score`` on consecutive distinct batches of ``batch`` sequences, for ``duration_s``."""
    meter = CpuMeter({"bench": [os.getpid()]})
    rm.score(sequences[:batch])  # warm-up (allocator, oneDNN primitives)
    done, i = 0, 0
    meter.start()
    start = time.perf_counter()
    while True:
        chunk = [sequences[(i + j) % len(sequences)] for j in range(batch)]
        rm.score(chunk)
        done += batch
        i += batch
        elapsed = time.perf_counter() - start
        if elapsed >= duration_s and done >= 2 * batch:
            break
    return {"items_per_s": round(done / elapsed, 2), "batch": batch, "cpu_cores": meter.stop()}


# ---------------------------------------------------------------- the service


class Runner:
    """Starts and stops stacks with the benchmark's settings; drives load at them."""

    def __init__(self, args: argparse.Namespace, model_path: str, log: Any) -> None:
        self.args, self.model_path, self.log = args, model_path, log
        self.open: list[Stack] = []

    def env(self) -> dict[str, str]:
        """Service settings; OMP_WAIT_POLICY comes from this process's environment (set in `main`)."""
        a = self.args
        # a backlog of 64 clients x 8 items x 256 tokens takes minutes on 2 cores: no request may time out
        return service_env(CGPO_BATCH_MAX_ITEMS=str(a.batch_max_items), CGPO_BATCH_MAX_WAIT_MS=str(a.batch_max_wait_ms),
                           CGPO_RM_MAX_BATCH_TOKENS=str(a.max_batch_tokens), CGPO_RM_DEVICE=a.device,
                           CGPO_RM_DTYPE=a.dtype, CGPO_REQUEST_TIMEOUT_S="1800", OMP_NUM_THREADS=str(a.threads),
                           **{NAIVE_DTYPE_ENV: a.dtype, NAIVE_DEVICE_ENV: a.device})

    def stack(self, mode: str) -> Stack:
        """``naive``, ``embedded`` or ``queue`` (the gateway runs no model there: one torch thread)."""
        model = ["--model", f"{MODEL_NAME}={self.model_path}"]
        env = self.env()
        if mode == "naive":
            env[NAIVE_PATH_ENV] = self.model_path
            cmd = [sys.executable, "-m", "uvicorn", "benchmarks.bench_rm:naive_app", "--factory", "--host",
                   "127.0.0.1", "--log-level", "warning"]
            s = Stack(cmd, None, env, raw_gateway=True, log=self.log, ready_timeout_s=120)
        elif mode == "embedded":
            s = Stack(["rm", "serve", *model], None, env, log=self.log, ready_timeout_s=120)
        else:
            s = Stack(["rm", "serve", *model], ["rm", "worker", *model], {**env, "OMP_NUM_THREADS": "1"},
                      workers=1, redis=True, worker_env={"OMP_NUM_THREADS": env["OMP_NUM_THREADS"]},
                      log=self.log, ready_timeout_s=120)
        self.open.append(s)
        return s

    def close(self, s: Stack, grace_s: float = 3.0) -> None:
        s.close(grace_s=grace_s)
        if s in self.open:
            self.open.remove(s)

    def close_all(self) -> None:
        for s in list(self.open):
            self.close(s)

    def load(self, s: Stack, path: str, bodies: list[bytes], per_request: int, warmup_s: float,
             duration_s: float, *, drain: bool) -> dict[str, Any]:
        meter = CpuMeter({"loadgen": [os.getpid()], **s.pids()})
        result = asyncio.run(closed_loop(s.base, path, bodies, per_request, self.args.clients, warmup_s,
                                         duration_s, meter=meter, drain=drain))
        if result.completions == 0:
            raise RuntimeError(f"no request completed in the {duration_s:.0f}s window on {path}; raise --duration-s")
        return result.as_dict()


def post_json(base: str, path: str, body: dict[str, Any], timeout_s: float = 600) -> Any:
    import httpx

    response = httpx.post(base + path, json=body, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return response.json()


def check_rewards(base: str, rm: Any, items: Sequence[dict[str, Any]], texts: Sequence[str] | None = None,
                  tol: float = 1e-3) -> None:
    """The service scores what the in-process model scores (guards against benchmarking a broken path)."""
    if texts is not None:
        got = post_json(base, "/get_reward", {"query": list(texts)})["rewards"]
        want = rm.score([rm.encode_text(t).ids for t in texts])
    else:
        results = post_json(base, "/v1/score", {"model": MODEL_NAME, "items": list(items)})["results"]
        got = [r["reward"] for r in results]
        want = rm.score([rm.encode(i["prompt"], i["response"]).ids for i in items])
    if any(abs(g - w) > tol * max(1.0, abs(w)) for g, w in zip(got, want, strict=True)):
        raise RuntimeError(f"service rewards {got[:4]} differ from in-process {want[:4]}")


def warm_baselines(base: str, items: Sequence[dict[str, Any]], per_prompt: int, rm: Any = None,
                   tol: float = 1e-3) -> float:
    """Score each prompt's first item with its baseline once, so every baseline is cached. Returns seconds.

    With ``rm``, also check one calibrated reward against σ(r − r_baseline) computed in-process.
    """
    firsts = list(items[::per_prompt])
    start = time.perf_counter()
    for i in range(0, len(firsts), 64):
        results = post_json(base, "/v1/score", {"model": MODEL_NAME, "items": firsts[i : i + 64]})["results"]
        if any(r["calibrated"] is None for r in results):
            raise RuntimeError("calibrated scoring returned no calibrated reward")
    elapsed = time.perf_counter() - start
    if rm is not None:
        from cgpo.services.rm.calibration import calibrated

        item = items[1]  # its baseline is cached by now
        [got] = post_json(base, "/v1/score", {"model": MODEL_NAME, "items": [item]})["results"]
        reward, baseline = rm.score([rm.encode(item["prompt"], item["response"]).ids,
                                     rm.encode(item["prompt"], item["baseline"]).ids])
        if abs(got["calibrated"] - calibrated(reward, baseline)) > tol:
            raise RuntimeError(f"calibrated reward {got} differs from in-process {calibrated(reward, baseline)}")
    return elapsed


# ---------------------------------------------------------------- summary


def spread(values: Sequence[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def fmt(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "-"
    if len(s["runs"]) == 1:
        return f"{s['median']:.2f}"
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


TARGETS = {  # ratio name -> (target, higher is better)
    "long_embedded_x1_vs_in_process_b32": (0.85, True), "long_embedded_x8_vs_in_process_b32": (0.85, True),
    "long_queue_x1_vs_in_process_b32": (0.85, True), "long_queue_x8_vs_in_process_b32": (0.85, True),
    "short_embedded_vs_naive": (2.0, True), "short_queue_vs_naive": (2.0, True),
    "calib_embedded_raw_over_calibrated": (1.1, False), "calib_queue_raw_over_calibrated": (1.1, False),
}


def summarize(runs: dict[str, list[dict[str, Any]]], ratios: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "cpu_cores": {}, "ratios": {}, "targets": {}}
    for key, values in runs.items():
        out["figures"][key] = spread([v["items_per_s"] for v in values])
        per_cpu = [v["items_per_cpu_s"] for v in values if v.get("items_per_cpu_s")]
        out["figures"][key]["items_per_cpu_s"] = round(statistics.median(per_cpu), 2) if per_cpu else None
        if "p50_ms" in values[0]:
            out["figures"][key]["p50_ms"] = round(statistics.median(v["p50_ms"] for v in values), 1)
        names = sorted({k for v in values for k in v.get("cpu_cores", {})})
        out["cpu_cores"][key] = {k: round(statistics.median(v["cpu_cores"].get(k, 0.0) for v in values), 2)
                                 for k in names}
    for name, values in ratios.items():
        out["ratios"][name] = spread(values)
        if name in TARGETS:
            target, above = TARGETS[name]
            median = out["ratios"][name]["median"]
            out["targets"][name] = {"target": f"{'>=' if above else '<='} {target}", "median": median,
                                    "met": median >= target if above else median <= target}
    return out


def print_table(report: dict[str, Any]) -> None:
    figures, cpu = report["figures"], report["cpu_cores"]
    print(f"\n{'measurement':30} {'items/s median [min-max]':>28} {'/CPU-s':>7} {'p50 ms':>8}  "
          "cpu cores used (median over runs)")
    for key, s in figures.items():
        print(f"{key:30} {fmt(s):>28} {s['items_per_cpu_s'] or '':>7} {s.get('p50_ms', ''):>8}  "
              + " ".join(f"{k}={v}" for k, v in cpu.get(key, {}).items()))
    print(f"\n{'ratio (paired within a repeat)':40} {'median [min-max]':>24} {'target':>8}  met")
    for key, s in report["ratios"].items():
        t = report["targets"].get(key)
        print(f"{key:40} {fmt(s):>24} {t['target'] if t else '':>8}  "
              f"{'' if t is None else 'yes' if t['met'] else 'NO'}")


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=15.0, help="measurement window of each run, after warm-up "
                   "(256-token runs: at least 3 batch periods)")
    p.add_argument("--warmup-s", type=float, default=4.0, help="load before each window (256-token runs: at "
                   "least 1.5 batch periods)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of every figure, round robin")
    p.add_argument("--quick", action="store_true", help="one repeat of 6 s windows")
    p.add_argument("--sections", default="1,2,3", help="which parts to run (comma-separated)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (OMP_NUM_THREADS) of every process that runs the model: service, naive "
                   "server and the in-process baseline alike")
    p.add_argument("--omp-wait-policy", default="passive", help="OMP_WAIT_POLICY of the same processes; passive "
                   "keeps 2 threads from spin-waiting on a core another process holds ('' = OpenMP default)")
    p.add_argument("--batch-max-items", type=int, default=32, help="CGPO_BATCH_MAX_ITEMS (half the clients: "
                   "one batch queues while the other runs)")
    p.add_argument("--batch-max-wait-ms", type=float, default=0.0, help="CGPO_BATCH_MAX_WAIT_MS")
    p.add_argument("--max-batch-tokens", type=int, default=2048, help="CGPO_RM_MAX_BATCH_TOKENS (2048, the "
                   "least CGPO_RM_MAX_LENGTH allows: forwards of 8 x 256 tokens, 12 MB activations instead of 50 MB; "
                   "2-4%% more items per CPU-second than 32 x 256; 32-token batches of 32 are not split)")
    p.add_argument("--malloc-threshold", type=int, default=1 << 30, help="MALLOC_MMAP_THRESHOLD_ and "
                   "MALLOC_TRIM_THRESHOLD_ (bytes) of every process, this one included (it re-executes itself): "
                   "glibc's defaults mmap and unmap each large activation, so a fresh process page-faults "
                   "~5k times per 256-token item and runs 10-15%% slower than one whose heap is warm; 0 keeps them")
    p.add_argument("--device", default="cpu", help="CGPO_RM_DEVICE (the in-process baseline uses it too)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="CGPO_RM_DTYPE, for the service, the naive server and the in-process baseline alike")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--json", default="", help="also write the JSON report to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.duration_s, args.warmup_s = 1, 6.0, 3.0
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, rm: Any, runner: Runner) -> None:
        self.args, self.rm, self.runner = args, rm, runner
        self.tol = 1e-3 if args.dtype == "float32" else 5e-2  # bf16 scores move with batch composition
        work = Workload(rm)
        self.long_items = work.pairs(2048, 256)
        self.long_seqs = work.sequences(self.long_items)
        self.per_prompt = 16  # rollouts sharing a prompt and its baseline
        self.calib_items = work.pairs(4096, 32, per_prompt=self.per_prompt, baselines=True)
        self.raw_items = [{k: v for k, v in i.items() if k != "baseline"} for i in self.calib_items]
        self.short_seqs = work.sequences(self.raw_items)
        self.texts = work.texts(2048, 32)
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.ratios: dict[str, list[float]] = {}
        self.extra: dict[str, list[float]] = {}

    def record(self, key: str, value: dict[str, Any]) -> tuple[float, float]:
        """Keep a run; returns (items/s, items per CPU-second of this benchmark's own processes)."""
        ours = sum(v for k, v in value.get("cpu_cores", {}).items() if k not in ("others", "idle"))
        value["items_per_cpu_s"] = round(value["items_per_s"] / ours, 3) if ours > 0 else None
        self.runs.setdefault(key, []).append(value)
        cpu = value.get("cpu_cores", {})
        print(f"  {key:28} {value['items_per_s']:8.2f} items/s  {value['items_per_cpu_s'] or 0:7.2f} items/CPU-s  "
              f"cpu {cpu}", flush=True)
        return value["items_per_s"], value["items_per_cpu_s"] or 0.0

    def ratio(self, name: str, num: tuple[float, float], dens: Sequence[tuple[float, float]]) -> None:
        """``num`` over the mean of ``dens`` (measured just before and after it), in items/s and items/CPU-s."""
        for i, suffix in ((0, ""), (1, "_per_cpu")):
            den = statistics.mean(d[i] for d in dens)
            if den > 0:
                self.ratios.setdefault(name + suffix, []).append(num[i] / den)

    def in_process(self, key: str, seqs: Sequence[tuple[int, ...]], batch: int) -> tuple[float, float]:
        return self.record(key, in_process(self.rm, seqs, batch, self.args.duration_s))

    def long(self, r: int) -> None:
        """256-token items: each service run between two in-process batch-32 runs."""
        a = self.args
        for b in (1, 8):
            self.in_process(f"long/in_process_b{b}", self.long_seqs, b)
        configs = [(mode, k) for mode in ("embedded", "queue") for k in (1, 8)]
        if r % 2:
            configs.reverse()
        stacks = {c: self.runner.stack(c[0]) for c in configs}  # started up front, out of the windows
        try:
            if r == 0:
                check_rewards(stacks[configs[0]].base, self.rm, self.long_items[:3], tol=self.tol)
            before = self.in_process("long/in_process_b32", self.long_seqs, 32)
            period_s = a.batch_max_items / max(before[0], 1e-3)  # one full batch's forward
            warmup_s, duration_s = max(a.warmup_s, 1.5 * period_s), max(a.duration_s, 3 * period_s)
            for mode, k in configs:
                s = stacks[(mode, k)]
                try:  # cancelled at the end of the window: the backlog dies with the stack
                    got = self.record(f"long/{mode}_x{k}", self.runner.load(
                        s, "/v1/score", score_bodies(self.long_items, k), k, warmup_s, duration_s, drain=False))
                finally:
                    self.runner.close(s, grace_s=0)
                after = self.in_process("long/in_process_b32", self.long_seqs, 32)
                self.ratio(f"long_{mode}_x{k}_vs_in_process_b32", got, (before, after))
                before = after
        finally:
            for s in stacks.values():
                self.runner.close(s, grace_s=0)

    def short(self, r: int, sections: set[int]) -> None:
        """32-token items: naive server before and after the service (sec. 2), then raw vs calibrated (sec. 3)."""
        a = self.args
        if 2 in sections:
            b1 = self.in_process("short/in_process_b1", self.short_seqs, 1)
            b32 = self.in_process("short/in_process_b32", self.short_seqs, 32)
            self.ratio("short_in_process_b32_over_b1", b32, [b1])
        modes = ["embedded", "queue"] if r % 2 == 0 else ["queue", "embedded"]
        stacks = {m: self.runner.stack(m) for m in modes}
        if 2 in sections:
            stacks["naive"] = self.runner.stack("naive")
        try:
            if 2 in sections:
                if r == 0:
                    check_rewards(stacks["naive"].base, self.rm, [], self.texts[:1], tol=self.tol)
                    check_rewards(stacks[modes[0]].base, self.rm, [], self.texts[:3], tol=self.tol)
                bodies = reward_bodies(self.texts)

                def run(name: str) -> tuple[float, float]:
                    return self.record(f"short/{name}", self.runner.load(
                        stacks[name], "/get_reward", bodies, 1, a.warmup_s, a.duration_s, drain=True))

                naive = run("naive")
                for m in modes:  # each service run between two naive runs
                    got = run(m)
                    after = run("naive")
                    self.ratio(f"short_{m}_vs_naive", got, (naive, after))
                    naive = after
                self.runner.close(stacks.pop("naive"))
            if 3 in sections:
                for m in modes:
                    self.extra.setdefault(f"calib/{m}", []).append(warm_baselines(
                        stacks[m].base, self.calib_items, self.per_prompt, self.rm if r == 0 else None, self.tol))
                    value = {}
                    for kind in (("raw", "calibrated") if r % 2 == 0 else ("calibrated", "raw")):
                        items = self.raw_items if kind == "raw" else self.calib_items
                        value[kind] = self.record(f"calib/{m}_{kind}", self.runner.load(
                            stacks[m], "/v1/score", score_bodies(items, 1), 1, a.warmup_s, a.duration_s, drain=True))
                    self.ratio(f"calib_{m}_raw_over_calibrated", value["raw"], [value["calibrated"]])
        finally:
            for s in stacks.values():
                self.runner.close(s)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.malloc_threshold and os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(args.malloc_threshold):
        # glibc reads these at start-up only: run again with them, so the in-process baseline has them too
        os.environ["MALLOC_MMAP_THRESHOLD_"] = os.environ["MALLOC_TRIM_THRESHOLD_"] = str(args.malloc_threshold)
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv])
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    # before torch is imported: the in-process baseline and every service process run with the same threads
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    from cgpo.services.rm.model import RewardModel

    torch.set_num_threads(args.threads)

    def terminate(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    tmp = tempfile.TemporaryDirectory(prefix="bench-rm-")
    log = open(Path(tmp.name) / "services.log", "w+b")  # noqa: SIM115 - closed in finally
    runner: Runner | None = None
    try:
        info = build_reward_model(Path(tmp.name) / "model", args.hidden, args.layers, args.intermediate, args.heads)
        print(f"reward model: {info['parameters'] / 1e6:.2f}M parameters "
              f"({info['non_embedding_parameters'] / 1e6:.2f}M without embeddings; vocab {info['vocab']}), "
              f"hidden {args.hidden}, {args.layers} layers, MLP {args.intermediate}", flush=True)
        rm = RewardModel(MODEL_NAME, info["path"], device=args.device, dtype=args.dtype)
        rm.load()
        runner = Runner(args, info["path"], log)
        bench = Bench(args, rm, runner)
        for r in range(args.repeats):
            print(f"repeat {r + 1}/{args.repeats}", flush=True)
            if 1 in sections:
                bench.long(r)
            if sections & {2, 3}:
                bench.short(r, sections)
        settings = {k: getattr(args, k) for k in ("clients", "threads", "omp_wait_policy", "batch_max_items",
                                                  "batch_max_wait_ms", "max_batch_tokens", "malloc_threshold", "device",
                                                  "dtype")}
        report: dict[str, Any] = {
            "model": {k: v for k, v in info.items() if k != "path"}, "settings": settings, "cores": os.cpu_count(),
            "torch": torch.__version__, "repeats": args.repeats, "duration_s": args.duration_s,
            **summarize(bench.runs, bench.ratios),
            "baseline_warmup_s": {k: spread(v) for k, v in bench.extra.items()}}
        print_table(report)
        print(json.dumps(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    except BaseException:
        log.flush()
        log.seek(0)
        tail = log.read()[-4000:].decode(errors="replace")
        if tail.strip():
            print(f"--- service logs (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        if runner is not None:
            runner.close_all()
        log.close()
        with contextlib.suppress(OSError):
            tmp.cleanup()


if __name__ == "__main__":
    main()
