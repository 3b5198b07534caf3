"""Preference pairs on disk: the JSONL that ``cgpo rm train`` and ``cgpo warmup`` both read.

One ``{"prompt": str, "chosen": str, "rejected": str}`` per line (other keys are ignored).
``prompt`` may also be a chat list holding exactly one ``{"role": "user", "content": str}`` message:
the RM service scores a single user turn, so longer conversations are rejected rather than silently
cut to something the service would never see.

Both trainers (the reward model's in the RM service, the DPO warm-up in the trainer) validate and
split their data the same way, so the format and its checks live here, outside either of them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def load_pairs(path: str | Path) -> list[Pair]:
    """Every pair in a JSONL file; any bad line raises ``ValueError("FILE:LINE: why")``. Blank lines are skipped."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                pairs.append(_parse_pair(line, f"{path}:{lineno}"))
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def _parse_pair(line: str, where: str) -> Pair:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with prompt, chosen and rejected")
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], dict) or prompt[0].get("role") != "user":
            raise ValueError(f"{where}: a chat prompt must be exactly one user message (the RM scores one "
                             "user turn); pass a string instead")
        prompt = prompt[0].get("content")
    for key, value in (("prompt", prompt), ("chosen", row.get("chosen")), ("rejected", row.get("rejected"))):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    if row["chosen"] == row["rejected"]:
        raise ValueError(f"{where}: chosen and rejected are identical")
    return Pair(prompt, row["chosen"], row["rejected"])


def split_pairs(pairs: Sequence[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, eval): a seeded shuffle, the first ``round(eval_fraction · n)`` (at least 1 if > 0) held out."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(pairs))) if eval_fraction > 0 else 0
    if n_eval >= len(pairs):
        raise ValueError(f"eval_fraction {eval_fraction} leaves no training pairs out of {len(pairs)}")
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]
