"""Train a Bradley–Terry reward model from preference pairs (``cgpo rm train``).

Data: preference-pair JSONL, read and checked by `cgpo.pairs` (the DPO warm-up reads the same files).

Encoding and reading are the service's own: token ids come from ``RewardModel.encode`` (same chat
template, same truncation to ``max_length``) and the reward is the ``score`` head's output at the
last real token with position ids counted over real tokens, as in ``RewardModel._forward``. Serve the
result with the same ``max_length`` it was trained with.

Loss (Bradley–Terry, Ouyang et al. 2022 eq. 1; CGPO §3 calibrates these raw rewards):

    L = −mean_pairs log σ( r(x, y_chosen) − r(x, y_rejected) )
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cgpo.pairs import Pair, load_pairs, split_pairs

REPORT_FILE = "training_report.json"


@dataclass
class TrainConfig:
    base: str
    """Local checkpoint to start from: a causal LM (a fresh ``score`` head is added) or a reward model."""
    data: str
    """Preference pairs, JSONL with ``prompt``, ``chosen``, ``rejected`` per line."""
    out: str
    """Directory to save the reward model, its tokenizer and ``training_report.json`` in."""
    epochs: int = 1
    """Passes over the training pairs."""
    lr: float = 1e-5
    """Peak AdamW learning rate."""
    batch_size: int = 8
    """Pairs per optimizer step; chosen and rejected go through one padded forward (2 × batch_size rows)."""
    max_length: int = 2048
    """Token budget per (prompt, response), as ``RewardModel(max_length=...)``; serve with the same value."""
    eval_fraction: float = 0.05
    """Share of pairs held out (chosen by ``seed``) for accuracy/margin/loss before and after; 0 = none."""
    warmup_ratio: float = 0.03
    """Share of optimizer steps spent warming the learning rate up linearly; it then decays linearly."""
    weight_decay: float = 0.0
    """AdamW weight decay, on matrices only (not biases or norms)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm."""
    seed: int = 0
    """Seeds the split, the shuffling, the new head's initialisation and torch."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None = cuda when available. Training runs in float32."""

    def __post_init__(self) -> None:
        for name in ("base", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: must be a non-empty path")
        if not (Path(self.base) / "config.json").is_file():
            raise ValueError(f"base: {self.base} is not a model directory (no config.json)")
        if not Path(self.data).is_file():
            raise ValueError(f"data: {self.data} is not a file")
        if Path(self.out).resolve() == Path(self.base).resolve():
            raise ValueError("out: must differ from base (the starting checkpoint would be overwritten)")
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_length", self.max_length, 1)
        _check_int("seed", self.seed, None)
        _check_float("lr", self.lr, lambda v: v > 0, "must be > 0")
        _check_float("eval_fraction", self.eval_fraction, lambda v: 0 <= v < 1, "must be in [0, 1)")
        _check_float("warmup_ratio", self.warmup_ratio, lambda v: 0 <= v <= 1, "must be in [0, 1]")
        _check_float("weight_decay", self.weight_decay, lambda v: v >= 0, "must be >= 0")
        _check_float("max_grad_norm", self.max_grad_norm, lambda v: v > 0, "must be > 0")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", str(self.device)):
            raise ValueError(f"device: {self.device!r} is not cpu, cuda, cuda:N or mps")


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def _check_float(name: str, value: Any, ok: Callable[[float], bool], rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}: {rule}, got {value!r}")


# -------------------------------------------------------------------- model math


def bradley_terry_loss(r_chosen, r_rejected):
    """−mean log σ(r_chosen − r_rejected); both (P,), one reward per pair. Returns a scalar."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pair_rewards(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: str):
    """(r_chosen, r_rejected), each (P,), from one padded forward over all 2P sequences."""
    from cgpo.services.rm.model import last_token_rewards, pad

    ids, mask = pad([c for c, _ in pairs] + [r for _, r in pairs], pad_id)
    rewards = last_token_rewards(model, ids.to(device), mask.to(device)).float()  # (2P,)
    return rewards[: len(pairs)], rewards[len(pairs):]


def evaluate(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int, pad_id: int,
             device: str) -> dict[str, float] | None:
    """Pairwise accuracy (r_chosen > r_rejected), mean margin and BT loss over ``pairs``; None if empty."""
    import torch

    if not pairs:
        return None
    model.eval()
    margins = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            r_chosen, r_rejected = pair_rewards(model, pairs[start:start + batch_size], pad_id, device)
            margins.append(r_chosen - r_rejected)
    margin = torch.cat(margins)  # (P,)
    return {"pairs": len(pairs), "accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item(),
            "loss": bradley_terry_loss(margin, torch.zeros_like(margin)).item()}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay towards 0 at ``total`` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# -------------------------------------------------------------------- training


def load_base(path: str, max_length: int, device: str):
    """(RewardModel loaded in float32, pad id): the service's own loader, so a causal LM gets a ``score`` head.

    A config without ``pad_token_id`` gets the tokenizer's pad (else EOS), the id the service pads with:
    HF refuses batches > 1 without one, and it is saved with the model.
    """
    from cgpo.services.rm.model import RewardModel

    rm = RewardModel("train", path, max_length=max_length, device=device, dtype="float32")
    rm.load()
    text_config = rm.model.config.get_text_config()
    if text_config.pad_token_id is None:
        text_config.pad_token_id = rm.pad_id
    return rm, rm.pad_id


def encode_pairs(rm, pairs: Sequence[Pair]) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...]]], int]:
    """((chosen ids, rejected ids) per pair, number of pairs with a truncated side), via ``RewardModel.encode``."""
    encoded, truncated = [], 0
    for pair in pairs:
        chosen, rejected = rm.encode(pair.prompt, pair.chosen), rm.encode(pair.prompt, pair.rejected)
        truncated += chosen.truncated or rejected.truncated
        encoded.append((chosen.ids, rejected.ids))
    return encoded, truncated


def train_reward_model(config: TrainConfig, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Fit ``config.base`` to ``config.data``, save it to ``config.out``, return (and save) the report."""
    import torch
    from transformers import set_seed

    say = log or (lambda _msg: None)
    started = time.monotonic()
    pairs = load_pairs(config.data)  # all data errors surface before any model is loaded
    set_seed(config.seed)  # before loading: a causal LM gets a freshly initialised score head
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rm, pad_id = load_base(config.base, config.max_length, device)
    model, tokenizer = rm.model, rm.tokenizer
    encoded, truncated = encode_pairs(rm, pairs)
    if truncated:
        say(f"warning: {truncated} of {len(pairs)} pairs were truncated to max_length={config.max_length}")
    train, held_out = split_pairs(encoded, config.eval_fraction, config.seed)
    say(f"{len(pairs)} pairs from {config.data}: {len(train)} train, {len(held_out)} held out")

    def held_out_metrics(when: str) -> dict[str, float] | None:
        metrics = evaluate(model, held_out, batch_size=config.batch_size, pad_id=pad_id, device=device)
        if metrics:
            say(f"{when}: accuracy {metrics['accuracy']:.3f}  margin {metrics['margin']:+.4f}  "
                f"loss {metrics['loss']:.4f}")
        return metrics

    before = held_out_metrics("held out before training")

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_ratio * total)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    shuffle = torch.Generator().manual_seed(config.seed)
    epoch_losses, step, log_every = [], 0, max(1, total // 10)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=shuffle).tolist()
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = [train[i] for i in order[start:start + config.batch_size]]
            r_chosen, r_rejected = pair_rewards(model, batch, pad_id, device)
            loss = bradley_terry_loss(r_chosen, r_rejected)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            if step % log_every == 0 or step == total:
                say(f"epoch {epoch + 1}/{config.epochs} step {step}/{total} loss {loss.item():.4f} "
                    f"lr {schedule.get_last_lr()[0]:.2e}")
        epoch_losses.append(sum(losses) / len(losses))
    after = held_out_metrics("held out after training")

    out = Path(config.out)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {
        "config": asdict(config),
        "device": device,
        "pairs": {"total": len(pairs), "train": len(train), "eval": len(held_out), "truncated": truncated},
        "steps": total,
        "train_loss_per_epoch": epoch_losses,
        "eval_before": before,
        "eval_after": after,
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    say(f"saved reward model and {REPORT_FILE} to {out}")
    return report


# -------------------------------------------------------------------- CLI

def run(args: argparse.Namespace) -> int:
    """``cgpo rm train`` (flags: cgpo/cli.py): 0 when trained and saved; a bad config or bad data raises
    ``ValueError``, which the CLI reports."""
    from cgpo.modelfiles import resolve_model

    args.base = resolve_model(args.base)  # a GGUF base is converted (and cached) first
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    report = train_reward_model(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps({k: report[k] for k in ("pairs", "steps", "eval_before", "eval_after", "elapsed_s")}))
    return 0
