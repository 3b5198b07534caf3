"""CGPO training steps on SmolLM2-135M's shape: the SmolLM2 IFEval recipe, timed per phase, with each engine.

The run is ``configs/smollm2-ifeval.yaml`` adapted to a random-weight policy of SmolLM2-135M's shape and
a reward model of the same layers with a score head (embedded), on ``cgpo ifeval prompts``
(``cgpo.instructions.generate_prompts``; 64 prompts, one batch of them per step, K = 4, 128 new tokens),
judged by ``instructions``, optimized with CRPG: 3 steps through ``cgpo.trainer.loop.train``, bf16
autocast on the GPU (fp32 on the CPU), no held-out prompts, no checkpoint before the end. Changed from the
recipe besides the sizes: ``max_batch_rows`` unset (all of a step's rows decode at once),
``micro_batch_size`` 32 (the recipe's 8 is sized for a CPU) and ``unconstrained_baseline: true``. The
last keeps the work of a step fixed: a random-weight policy rarely satisfies an instruction, and a CRPG
step with no feasible sample has no gradient and skips the backward pass, while one with any feasible
sample backpropagates every sample, which is what the RM-only CRPG of ``unconstrained_baseline`` always
does; the judges still run on every sample and are timed. It runs once with ``generation.engine: hf`` and,
when vLLM is installed, once with ``vllm``.

Figures are the means over the steps after the first (which pays one-off warm-up: kernels, allocator,
judge processes):

* the step's phases, ``time/*_s`` of the metric records: ``generate``, ``score`` (judges and RM),
  ``update`` (which contains ``logprobs``, the no-grad log π_w and log π_ref passes, and ``backward``,
  the recomputed forward and backward of the sequences with a non-zero gradient; the rest of ``update``
  is the losses and the optimizer step); a step is generate + score + update;
* training tokens/s: Σ over the step's N = B·K samples of (prompt + response tokens) ÷ step seconds;
* MFU: model FLOPs ÷ step seconds ÷ the bf16 matrix-product rate this GPU reaches
  (``common.matmul_peak_tflops``), with the usual dense-transformer count, N_p = the policy's parameters
  (the tied embedding counted once, which stands for the LM head's product):
  2·N_p·(tokens through forward passes without grad) + 6·N_p·(tokens through forward and backward).
  Forward without grad: the rollouts (each sample's prompt and response once, with a KV cache) and the
  update's log π_w and log π_ref passes (samples and the prompts' baselines); forward and backward: the
  sequences the update backpropagates. Attention-score FLOPs, the reward model and padding are not
  counted; ``update_mfu`` is the same count for the update phase alone;
* peak GPU memory over the whole run (``torch.cuda.max_memory_allocated``; with vLLM in this process
  its KV cache is included).

The token counts come from the run itself: ``token_counts`` wraps the loop's ``draw`` (each step's
rollouts) and the update's ``sequence_logprobs`` (each pass, by grad mode) for the run's duration.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks.gpu.common import (REPO, Context, build_model, guarded, matmul_peak_tflops, parameters, peak_memory,
                                   vllm_environment, vllm_version)

RECIPE = REPO / "configs" / "smollm2-ifeval.yaml"
PHASES = ("generate", "score", "logprobs", "backward", "update")
ENGINES = ("hf", "vllm")


def run(ctx: Context) -> dict[str, Any]:
    policy = build_model(ctx, "policy")
    reward_model = build_model(ctx, "rm", kind="sequence-classification")
    prompts = write_prompts(ctx, ctx.size(64, 8))
    peak = matmul_peak_tflops(ctx)
    result: dict[str, Any] = {"parameters": parameters(policy), "peak_tflops": significant(peak)}
    for engine in ENGINES:
        if engine == "vllm" and vllm_version() is None:
            result[engine] = {"skipped": "vllm not installed"}
            continue
        guarded(engine, lambda engine=engine: measure(
            ctx, run_config(ctx, engine, policy, reward_model, prompts), result["parameters"], peak), result)
    result["summary"] = summary(result)
    return result


def write_prompts(ctx: Context, n: int) -> Path:
    """``n`` prompts of ``cgpo ifeval prompts`` (seed 0) as a prompt file."""
    from cgpo.instructions import generate_prompts, write_jsonl

    path = ctx.work / "trainer_step" / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, generate_prompts(n, seed=0))
    return path


def run_config(ctx: Context, engine: str, policy: Path, reward_model: Path, prompts: Path) -> Any:
    """The recipe with this run's models, prompts, sizes, precision, device and engine."""
    from cgpo.trainer.config import build_config

    raw = yaml.safe_load(RECIPE.read_text())
    out = ctx.work / "trainer_step" / engine
    shutil.rmtree(out, ignore_errors=True)
    raw.update(policy=str(policy), output_dir=str(out), steps=ctx.size(3, 2), eval_every=0, checkpoint_every=0,
               precision="bf16" if ctx.device == "cuda" else "fp32", device=ctx.device, unconstrained_baseline=True)
    raw["generation"].update(engine=engine, max_new_tokens=ctx.size(128, 8))
    raw["generation"].pop("max_batch_rows", None)
    raw["optim"]["micro_batch_size"] = ctx.size(32, 2)
    task = raw["tasks"][0]
    task.pop("eval_prompts", None)
    task.update(prompts=str(prompts), reward_model={"embedded": str(reward_model)}, batch_size=ctx.size(64, 2),
                k=ctx.size(4, 2))
    return build_config(raw)


def describe(config: Any) -> dict[str, Any]:
    task = config.tasks[0]
    return {"steps": config.steps, "precision": config.precision, "device": config.device,
            "batch_size": task.batch_size, "k": task.k, "optimizer": task.optimizer, "judges": task.judges,
            "max_new_tokens": config.generation.max_new_tokens, "temperature": config.generation.temperature,
            "micro_batch_size": config.optim.micro_batch_size,
            "unconstrained_baseline": config.unconstrained_baseline}


def measure(ctx: Context, config: Any, policy_parameters: int, peak_tflops: float) -> dict[str, Any]:
    """Train ``config`` from scratch; the figures of the module docstring."""
    import time

    from cgpo.trainer.loop import train

    if config.generation.engine == "vllm":
        vllm_environment(ctx)
    tic = time.perf_counter()
    with peak_memory(ctx) as memory, token_counts() as counts:
        records = train(config, resume=False, log=lambda _: None)
    wall = time.perf_counter() - tic
    steps = [r for r in records if r.get("step", 0) >= 1]
    measured = steps[1:] or steps
    out = {"config": describe(config), "measured_steps": [int(r["step"]) for r in measured],
           "train_wall_s": round(wall, 1), "peak_memory_gib": round(memory["peak_gib"], 2)}
    out.update(phase_times(measured))
    out.update(throughput(measured, counts, out["step_s"], out["update_s"], policy_parameters, peak_tflops))
    out["per_step"] = [{"step": int(r["step"]), **{k: round(r[f"time/{k}_s"], 3) for k in PHASES},
                        **counts.get(int(r["step"]), {})} for r in steps]
    return out


def phase_times(records: list[dict[str, float]]) -> dict[str, float]:
    means = {f"{phase}_s": statistics.mean(r[f"time/{phase}_s"] for r in records) for phase in PHASES}
    means["step_s"] = means["generate_s"] + means["score_s"] + means["update_s"]
    return {key: round(value, 4) for key, value in means.items()}


def throughput(records: list[dict[str, float]], counts: dict[int, dict[str, int]], step_s: float, update_s: float,
               policy_parameters: int, peak_tflops: float) -> dict[str, Any]:
    """Tokens per step (means over ``records``' steps), training tokens/s, model FLOPs and MFU."""
    rows = [counts[int(r["step"])] for r in records]
    tokens = {key: statistics.mean(row[key] for row in rows) for key in ("samples", "no_grad", "with_grad")}
    update_flops = 2 * policy_parameters * tokens["no_grad"] + 6 * policy_parameters * tokens["with_grad"]
    step_flops = update_flops + 2 * policy_parameters * tokens["samples"]
    response = [v for r in records for k, v in r.items() if k.endswith("/response_tokens")]
    return {"response_tokens": round(statistics.mean(response), 1),
            "tokens_per_step": {key: round(value) for key, value in tokens.items()},
            "training_tokens_per_s": round(tokens["samples"] / step_s, 1),
            "model_tflops_per_step": significant(step_flops / 1e12),
            "achieved_tflops": significant(step_flops / step_s / 1e12),
            "mfu": round(step_flops / step_s / (peak_tflops * 1e12), 4),
            "update_mfu": round(update_flops / update_s / (peak_tflops * 1e12), 4)}


@contextlib.contextmanager
def token_counts() -> Iterator[dict[int, dict[str, int]]]:
    """Per step (1-based): ``samples``, the prompt + response tokens of the step's rollouts; ``no_grad`` and
    ``with_grad``, the prompt + response tokens of the update's ``sequence_logprobs`` calls by grad mode.
    Counts real tokens (no padding); the loop's ``draw`` and the step's ``sequence_logprobs`` are wrapped
    for the duration of the block."""
    import torch

    from cgpo.trainer import loop, step

    counts: dict[int, dict[str, int]] = {}
    current: dict[str, int] = {}
    draw, sequence_logprobs = loop.draw, step.sequence_logprobs

    def counted_draw(run: Any, step_index: int, index: int) -> Any:
        nonlocal current
        drawn = draw(run, step_index, index)
        current = counts.setdefault(step_index + 1, {"samples": 0, "no_grad": 0, "with_grad": 0})
        current["samples"] += tokens(drawn.rollouts.prompt_ids, drawn.rollouts.response_ids)
        return drawn

    def counted_logprobs(model: Any, prompt_ids: Any, response_ids: Any, *args: Any, **kwargs: Any) -> Any:
        if current:
            current["with_grad" if torch.is_grad_enabled() else "no_grad"] += tokens(prompt_ids, response_ids)
        return sequence_logprobs(model, prompt_ids, response_ids, *args, **kwargs)

    loop.draw, step.sequence_logprobs = counted_draw, counted_logprobs
    try:
        yield counts
    finally:
        loop.draw, step.sequence_logprobs = draw, sequence_logprobs


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def tokens(prompt_ids: Any, response_ids: Any) -> int:
    return sum(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))


def summary(result: dict[str, Any]) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    for engine in ENGINES:
        check = result[engine]
        if "skipped" in check or "error" in check:
            rows.append((f"{engine} engine", "skipped" if "skipped" in check else "error", ""))
            continue
        rows += [(f"{engine}: step time", check["step_s"], "s"),
                 (f"{engine}: generate / score / update", " / ".join(
                     f"{check[f'{phase}_s']:.2f}" for phase in ("generate", "score", "update")), "s"),
                 (f"{engine}: log-probs / backward (in update)",
                  f"{check['logprobs_s']:.2f} / {check['backward_s']:.2f}", "s"),
                 (f"{engine}: training tokens/s", check["training_tokens_per_s"], "tok/s"),
                 (f"{engine}: MFU (step / update)", f"{check['mfu']:.2%} / {check['update_mfu']:.2%}", ""),
                 (f"{engine}: peak GPU memory", check["peak_memory_gib"], "GiB")]
    return rows
