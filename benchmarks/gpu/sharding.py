"""Sharded training on one GPU: ``parallel: ddp`` against ``fsdp`` (FSDP2 over a group of one), LoRA,
activation checkpointing on and off, next to a plain ``transformers`` forward + backward.

The policy is SmolLM2-135M's shape with random weights (``common.build_model``), loaded as the trainer loads
it — ``load_models`` (ddp: whole, bf16 autocast over fp32 weights, π_ref an fp32 copy) or
``load_sharded_models`` (fsdp: meta-device skeletons filled shard by shard, bf16 compute over fp32 masters
with ``MixedPrecisionPolicy``, π_ref held in bf16) — with its optimizer from ``make_optimizer``. One update
is the passes a CRPG step runs on N sequences of T tokens (P prompt + T − P response), in micro-batches of
M: log π_w without grad, log π_ref without grad, the recomputed forward and backward of every sequence
(``_backward_through_policy`` with a unit gradient each), then the gradient clip and AdamW's step.

Reported per configuration: training tokens/s (N·T tokens ÷ the update's seconds, median of 3 after one
warm-up) and peak GPU memory from loading to the last update (``torch.cuda.max_memory_allocated``). The
plain baseline is ``AutoModelForCausalLM`` in fp32 under bf16 autocast: the language-modelling loss forward
and backward over the same N·T tokens in the same micro-batches, and AdamW's step — the trainer's update
runs two more forward passes (π_w and π_ref without grad) on top of that, which a ratio near 3/5 of the
plain rate reflects (a backward costs about two forwards). The dry run uses toy sizes in fp32.
"""

from __future__ import annotations

import gc
from typing import Any

from benchmarks.gpu.common import Budget, Context, build_model, guarded, parameters, peak_memory, timed

CONFIGS = {
    "ddp": {"parallel": "ddp"},
    "ddp + checkpointing": {"parallel": "ddp", "activation_checkpointing": True},
    "fsdp": {"parallel": "fsdp"},
    "fsdp + checkpointing": {"parallel": "fsdp", "activation_checkpointing": True},
    "fsdp + LoRA r=16 + checkpointing": {"parallel": "fsdp", "activation_checkpointing": True,
                                         "lora": {"r": 16, "alpha": 32}},
}


def run(ctx: Context) -> dict[str, Any]:
    import torch

    budget = Budget(55)
    policy = build_model(ctx, "policy")
    n, t, p, m = ctx.size(64, 4), ctx.size(512, 24), ctx.size(128, 8), ctx.size(8, 2)
    from transformers import AutoConfig

    gen = torch.Generator().manual_seed(0)
    vocab = AutoConfig.from_pretrained(policy).vocab_size
    prompts = [torch.randint(3, vocab, (p,), generator=gen).tolist() for _ in range(n)]
    responses = [torch.randint(3, vocab, (t - p,), generator=gen).tolist() for _ in range(n)]
    shape = {"sequences": n, "tokens_per_sequence": t, "prompt_tokens": p, "micro_batch": m}
    result: dict[str, Any] = {"parameters": parameters(policy), "shape": shape}
    guarded("plain", lambda: budget.run(8, lambda: plain(ctx, policy, prompts, responses, m)), result)
    from cgpo.trainer.distributed import Dist

    dist = Dist.from_env(ctx.device, sharded=True)  # the group of one every fsdp configuration shards over
    try:
        for name, settings in CONFIGS.items():
            guarded(name, lambda settings=settings: budget.run(
                8, lambda: trainer_update(ctx, policy, settings, (prompts, responses, m), dist)), result)
    finally:
        dist.close()
    result["summary"] = summary(result)
    return result


def run_config(ctx: Context, policy: Any, settings: dict[str, Any], micro_batch: int) -> Any:
    from cgpo.trainer.config import build_config

    task = {"name": "t", "prompts": "unused.jsonl", "reward_model": {"embedded": "unused"}}
    return build_config({"policy": str(policy), "tasks": [task], "device": ctx.device,
                         "precision": "bf16" if ctx.device == "cuda" else "fp32",
                         "optim": {"micro_batch_size": micro_batch, "lr": 1e-6}, **settings})


def trainer_update(ctx: Context, policy: Any, settings: dict[str, Any], batch: tuple, dist: Any) -> dict[str, Any]:
    """Tokens/s and peak memory of the trainer's update under one configuration."""
    import torch

    from cgpo.precision import autocast
    from cgpo.trainer.distributed import SINGLE, device_for
    from cgpo.trainer.logprobs import sequence_logprobs
    from cgpo.trainer.setup import make_optimizer, training_models
    from cgpo.trainer.step import _backward_through_policy

    prompts, responses, m = batch
    config = run_config(ctx, policy, settings, m)
    device = device_for(config.device)
    release(ctx)
    with peak_memory(ctx) as memory:
        models = training_models(config, device, dist if config.parallel == "fsdp" else SINGLE)
        optimizer, _ = make_optimizer(config, models.policy)
        lockstep = dist if config.parallel == "fsdp" else None
        unit = torch.ones(len(prompts))

        def update() -> None:
            with autocast(config.precision, models.policy):
                with torch.no_grad():
                    sequence_logprobs(models.policy, prompts, responses, 1.0, m, lockstep)
                    sequence_logprobs(models.reference, prompts, responses, 1.0, m, lockstep)
                _backward_through_policy(models.policy, (prompts, responses), unit, (1.0, m), lockstep)
            torch.nn.utils.clip_grad_norm_([q for q in models.policy.parameters() if q.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = timed(ctx, update)["seconds"]
    tokens = sum(len(a) + len(b) for a, b in zip(prompts, responses))
    return {"tokens_per_s": round(tokens / seconds), "update_s": round(seconds, 4),
            "peak_gib": round(memory["peak_gib"], 3)}


def plain(ctx: Context, policy: Any, prompts: list, responses: list, m: int) -> dict[str, Any]:
    """A plain transformers forward + backward (language-modelling loss) and AdamW step over the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    release(ctx)
    with peak_memory(ctx) as memory:
        model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).to(ctx.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        rows = [torch.tensor(a + b) for a, b in zip(prompts, responses)]

        def update() -> None:
            for start in range(0, len(rows), m):
                ids = torch.stack(rows[start:start + m]).to(ctx.device)
                with torch.autocast(ctx.device, dtype=ctx.dtype, enabled=ctx.device == "cuda"):
                    model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = timed(ctx, update)["seconds"]
    tokens = sum(len(r) for r in rows)
    return {"tokens_per_s": round(tokens / seconds), "update_s": round(seconds, 4),
            "peak_gib": round(memory["peak_gib"], 3)}


def release(ctx: Context) -> None:
    import torch

    gc.collect()
    if ctx.device == "cuda":
        torch.cuda.empty_cache()


def summary(result: dict[str, Any]) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    for name in ("plain", *CONFIGS):
        got = result.get(name, {})
        label = "plain transformers forward + backward" if name == "plain" else f"trainer update, {name}"
        if "tokens_per_s" in got:
            rows.append((label, f"{got['tokens_per_s']:,} tokens/s, peak {got['peak_gib']} GiB", ""))
        else:
            rows.append((label, got.get("error", got.get("skipped", "missing")), ""))
    return rows
