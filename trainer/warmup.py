"""``cgpo warmup``: the DPO warm-up CGPO starts from (docs/method.md §1), on preference JSONL.

DPO is CODPO's loss with λ = 0 on dataset pairs, so it reuses `codpo_loss`:

    L = −mean log σ(β · ([log π_w(a⁺) − log π_ref(a⁺)] − [log π_w(a⁻) − log π_ref(a⁻)]))

π_ref is the frozen starting policy; prompts are rendered with the policy's chat template as in
training. Data: JSONL lines ``{"prompt", "chosen", "rejected"}``, read by `cgpo.pairs` (the reward-model
trainer's format and checks).
"""

from __future__ import annotations

import argparse
import dataclasses
import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgpo.pairs import load_pairs, split_pairs
from cgpo.trainer.data import Prompt, render


@dataclass
class WarmupConfig:
    policy: str
    """Starting policy (local path); also the frozen reference."""
    data: str
    """Preference pairs, JSONL with prompt, chosen, rejected."""
    out: str
    """Where the warmed-up policy is saved."""
    epochs: int = 1
    lr: float = 1e-6
    beta: float = 0.1
    batch_size: int = 8
    eval_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        for name in ("lr", "beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")


def warmup(config: WarmupConfig, log: Any = print) -> dict[str, Any]:
    """Train with DPO and save the policy; returns held-out preference accuracy before and after."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    pairs = load_pairs(config.data)  # validates every line before loading a model
    train_pairs, held_out = split_pairs(pairs, config.eval_fraction, config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.policy)
    policy = AutoModelForCausalLM.from_pretrained(config.policy, dtype=torch.float32)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr)
    encode = _encoder(tokenizer)
    report: dict[str, Any] = {"pairs": len(pairs), "held_out": len(held_out),
                              "before": _accuracy(policy, reference, [encode(p) for p in held_out], config.beta)}
    for epoch in range(config.epochs):
        random.Random(config.seed + epoch).shuffle(train_pairs)
        for start in range(0, len(train_pairs), config.batch_size):
            batch = [encode(p) for p in train_pairs[start : start + config.batch_size]]
            policy.train()
            loss = _dpo(policy, reference, batch, config.beta).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        log(f"epoch {epoch + 1}/{config.epochs}: last batch loss {loss.item():.4f}")
    report["after"] = _accuracy(policy, reference, [encode(p) for p in held_out], config.beta)
    out = Path(config.out)
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "warmup_report.json").write_text(json.dumps(report, indent=2))
    return report


def _encoder(tokenizer: Any) -> Any:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(pair: Any) -> tuple[list[int], list[int], list[int]]:
        prompt = render(tokenizer, Prompt(id="", prompt=pair.prompt))
        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos
        return prompt, ids(pair.chosen), ids(pair.rejected)

    return encode


def _dpo(policy: Any, reference: Any, batch: list[tuple[list[int], list[int], list[int]]], beta: float) -> Any:
    import torch

    from cgpo.trainer.logprobs import sequence_logprobs
    from cgpo.trainer.losses import codpo_loss

    prompts = [p for p, _, _ in batch] * 2
    responses = [c for _, c, _ in batch] + [r for _, _, r in batch]
    logp = sequence_logprobs(policy, prompts, responses).logprobs
    with torch.no_grad():
        ref = sequence_logprobs(reference, prompts, responses).logprobs
    n = len(batch)
    lengths = torch.tensor([len(c) for _, c, _ in batch], dtype=torch.float32)
    return codpo_loss(logp[:n], ref[:n], logp[n:], ref[n:], lengths, beta, 0.0)


def _accuracy(policy: Any, reference: Any, batch: list[Any], beta: float) -> float | None:
    """Share of held-out pairs whose implicit reward margin Δ is positive."""
    import torch

    if not batch:
        return None
    with torch.no_grad():
        margin = _dpo(policy, reference, batch, beta).margin
    return (margin > 0).float().mean().item()


def run(args: argparse.Namespace) -> int:
    """``cgpo warmup`` (flags: cgpo/cli.py); a bad config or bad data raises ``ValueError``, which the
    CLI reports."""
    config = WarmupConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(WarmupConfig)})
    print(json.dumps(warmup(config)))
    return 0
