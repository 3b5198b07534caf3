"""Resumable checkpoints: policy weights, optimizer, schedule, prompt samplers, RNG states and step."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint saves and restores (besides the step and the RNG states)."""

    policy: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    samplers: dict[str, Any]
    sharded: bool = False
    """The policy is sharded (FSDP2): its weights and optimizer state are gathered to save, on every rank."""


def save_checkpoint(directory: Path, step: int, state: TrainState, main: bool = True) -> None:
    """Write ``state`` atomically: into ``directory.tmp``, then rename over ``directory``. A sharded
    policy's weights and optimizer state are first gathered whole (every rank takes part); ``main``
    writes."""
    weights, optimizer = _full_state(state)
    if not main:
        return
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state.policy.save_pretrained(tmp, state_dict=weights)
    state.tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer, "scheduler": state.scheduler.state_dict(),
                "samplers": {name: s.state_dict() for name, s in state.samplers.items()},
                "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}, tmp / STATE_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def _full_state(state: TrainState) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The policy's weights (None: its own state dict) and the optimizer's state, whole."""
    if not state.sharded:
        return None, state.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(state.policy, options=options),
            get_optimizer_state_dict(state.policy, state.optimizer, options=options))


def load_checkpoint(directory: Path, state: TrainState) -> int:
    """Restore everything saved by `save_checkpoint` into ``state``; returns the step to continue from."""
    from safetensors.torch import load_file

    policy = state.policy
    weights = {}
    for shard in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(shard))
    if state.sharded:
        _load_sharded(state, weights, torch.load(directory / STATE_FILE, weights_only=False)["optimizer"])
    else:
        missing, unexpected = policy.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if not _tied(policy, m)]:
            raise ValueError(f"checkpoint {directory} does not match the policy (missing {missing}, "
                             f"unexpected {unexpected})")
    saved = torch.load(directory / STATE_FILE, weights_only=False)
    if not state.sharded:
        state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    for name, sampler in state.samplers.items():
        sampler.load_state_dict(saved["samplers"][name])
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    return int(saved["step"])


def _load_sharded(state: TrainState, weights: dict[str, Any], optimizer: dict[str, Any]) -> None:
    """Whole weights and optimizer state into a sharded policy: each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(state.policy, weights, options=options)
    set_optimizer_state_dict(state.policy, state.optimizer, optimizer, options=options)


def _tied(model: Any, name: str) -> bool:
    """Tied weights (e.g. an LM head tied to the embeddings) are not saved separately."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")
