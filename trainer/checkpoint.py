"""Resumable checkpoints: policy weights, optimizer, schedule, prompt samplers, RNG states and step.

One process or replicas (``parallel: ddp``): rank 0 writes a plain transformers directory (the policy's
weights and tokenizer) plus ``trainer_state.pt``. Sharded (``parallel: fsdp``): every rank writes its
own shards of the weights and of the AdamW state with ``torch.distributed.checkpoint`` under ``dcp/`` —
nothing is gathered, so a checkpoint costs no rank more memory than training — and rank 0 writes the
model's ``config.json``, the tokenizer and ``trainer_state.pt``; a resumed run reads its shards back,
with any number of ranks. ``export`` turns either kind into a plain transformers directory that
transformers and vLLM load (``cgpo export``).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"
SHARDS = "dcp"
"""The sharded weights and optimizer state of a ``parallel: fsdp`` checkpoint."""


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint saves and restores (besides the step and the RNG states)."""

    policy: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    samplers: dict[str, Any]
    sharded: bool = False
    """The policy is sharded (FSDP2): every rank saves and loads its own shards."""


def save_checkpoint(directory: Path, step: int, state: TrainState, dist: Any = None) -> None:
    """Write ``state`` atomically: into ``directory.tmp``, then rename over ``directory``. Sharded, every
    rank writes its shards (``dist``: the run's ``Dist``); rank 0 writes the rest and renames."""
    main = dist is None or dist.main
    tmp = directory.with_name(directory.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if state.sharded:
        dist.barrier()  # the old tmp is gone before any rank writes
        _save_shards(state, tmp / SHARDS)
        dist.barrier()
    if not main:
        return
    if state.sharded:
        state.policy.config.save_pretrained(tmp)
        if getattr(state.policy, "generation_config", None) is not None:
            state.policy.generation_config.save_pretrained(tmp)  # EOS ids beyond the config's
    else:
        state.policy.save_pretrained(tmp)
    state.tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": None if state.sharded else state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "samplers": {name: s.state_dict() for name, s in state.samplers.items()},
                "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}, tmp / STATE_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def load_checkpoint(directory: Path, state: TrainState) -> int:
    """Restore everything saved by `save_checkpoint` into ``state``; returns the step to continue from."""
    if state.sharded != (directory / SHARDS).is_dir():
        written = "sharded (parallel: fsdp under torchrun)" if not state.sharded else "whole (one process or ddp)"
        raise ValueError(f"checkpoint {directory} was written {written}; resume it the way it was written, "
                         "or cgpo export it to start a new run from its weights")
    if state.sharded:
        _load_shards(state, directory / SHARDS)
    else:
        _load_whole(state, directory)
    saved = torch.load(directory / STATE_FILE, weights_only=False)
    if not state.sharded:
        state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    for name, sampler in state.samplers.items():
        sampler.load_state_dict(saved["samplers"][name])
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    return int(saved["step"])


def export(checkpoint: Path, out: Path) -> Path:
    """A plain transformers directory (safetensors weights, config, tokenizer) from a checkpoint of either
    kind; a sharded one is read whole in this process (no process group needed)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (checkpoint / STATE_FILE).is_file():
        raise ValueError(f"{checkpoint} is not a cgpo checkpoint (no {STATE_FILE})")
    if not (checkpoint / SHARDS).is_dir():
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint), dtype=torch.float32)
        _load_whole_from_shards(model, checkpoint / SHARDS)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
    return out


def _save_shards(state: TrainState, path: Path) -> None:
    """The policy's shards and, once AdamW has state (after its first step), the optimizer's: reading an
    empty optimizer's state dict would make it take a zero step, and change its bias correction."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    saved = {"model": get_model_state_dict(state.policy)}
    if state.optimizer.state:
        saved["optimizer"] = get_optimizer_state_dict(state.policy, state.optimizer)
    dcp.save(saved, checkpoint_id=str(path))


def _load_shards(state: TrainState, path: Path) -> None:
    """Each rank reads the parts of the saved shards that its own shards cover."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    saved = {"model": get_model_state_dict(state.policy)}
    dcp.load(saved, checkpoint_id=str(path))
    set_model_state_dict(state.policy, saved["model"])
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    if any(key.startswith("optimizer.") for key in stored):  # none saved before AdamW's first step
        optimizer = {"optimizer": get_optimizer_state_dict(state.policy, state.optimizer)}
        dcp.load(optimizer, checkpoint_id=str(path))
        set_optimizer_state_dict(state.policy, state.optimizer, optimizer["optimizer"])


def _load_whole_from_shards(model: Any, path: Path) -> None:
    """Every saved shard of the weights into one unsharded model (the optimizer state is not read)."""
    import torch.distributed.checkpoint as dcp

    weights = {name: t for name, t in model.state_dict().items() if not _tied(model, name)}
    saved = {"model": weights}
    dcp.load(saved, checkpoint_id=str(path), planner=_weights_only_planner())
    missing, unexpected = model.load_state_dict(saved["model"], strict=False)
    if unexpected or [m for m in missing if not _tied(model, m)]:
        raise ValueError(f"{path} does not match the model (missing {missing}, unexpected {unexpected})")


def _weights_only_planner() -> Any:
    """A load planner that reads the requested weights and leaves the rest of the checkpoint (the
    optimizer state) unread."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    return DefaultLoadPlanner(allow_partial_load=True)


def _load_whole(state: TrainState, directory: Path) -> None:
    from safetensors.torch import load_file

    policy, weights = state.policy, {}
    for shard in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(shard))
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if not _tied(policy, m)]:
        raise ValueError(f"checkpoint {directory} does not match the policy (missing {missing}, "
                         f"unexpected {unexpected})")


def _tied(model: Any, name: str) -> bool:
    """Tied weights (e.g. an LM head tied to the embeddings) are not saved separately."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")
