"""Resumable checkpoints: policy weights, optimizer, schedule, prompt samplers, RNG states and step."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"


def save_checkpoint(directory: Path, *, step: int, policy: Any, tokenizer: Any, optimizer: Any, scheduler: Any,
                    samplers: dict[str, Any]) -> None:
    """Write atomically: into ``directory.tmp``, then rename over ``directory``."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "samplers": {name: s.state_dict() for name, s in samplers.items()},
                "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}, tmp / STATE_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def load_checkpoint(directory: Path, *, policy: Any, optimizer: Any, scheduler: Any,
                    samplers: dict[str, Any]) -> int:
    """Restore everything saved by `save_checkpoint`; returns the step to continue from."""
    from safetensors.torch import load_file

    weights = {}
    for shard in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(shard))
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if not _tied(policy, m)]:
        raise ValueError(f"checkpoint {directory} does not match the policy (missing {missing}, "
                         f"unexpected {unexpected})")
    state = torch.load(directory / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for name, sampler in samplers.items():
        sampler.load_state_dict(state["samplers"][name])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"])


def _tied(model: Any, name: str) -> bool:
    """Tied weights (e.g. an LM head tied to the embeddings) are not saved separately."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")
