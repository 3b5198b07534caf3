"""Resumable checkpoints: policy weights, optimizer, schedule, prompt samplers, RNG states and step.

One process or replicas (``parallel: ddp``): rank 0 writes a plain transformers directory (the policy's
weights and tokenizer) plus ``trainer_state.pt``. Sharded (``parallel: fsdp``): every rank writes its
own shards of the weights and of the AdamW state with ``torch.distributed.checkpoint`` under ``dcp/`` —
nothing is gathered, so a checkpoint costs no rank more memory than training — and rank 0 writes the
model's ``config.json``, the tokenizer and ``trainer_state.pt``; a resumed run reads its shards back,
with any number of ranks (one process too, sharded over a group of one). With LoRA only the adapters are
saved (``adapter_model.safetensors``, or their shards) with ``adapter_config.json``, which names the base
they apply to. ``export`` turns either kind into a plain transformers directory that transformers and
vLLM load (``cgpo export``); a LoRA checkpoint into a peft adapter directory or, merged, a whole model.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cgpo.trainer.lora import ADAPTER, adapter_state, is_lora, load_adapter_state

STATE_FILE = "trainer_state.pt"
ADAPTER_CONFIG = "adapter_config.json"
"""A LoRA checkpoint's adapter settings and base model (peft's file)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""A LoRA checkpoint's adapters, unsharded (peft's file and names)."""
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
    """Write ``state`` into ``directory.tmp``, then swap it in by renames (the previous checkpoint moved to
    ``directory.old`` and removed once the new one is in place), so that a run stopped at any moment
    leaves a whole checkpoint (`recover_checkpoint`). Sharded, every rank writes its shards (``dist``: the
    run's ``Dist``); rank 0 writes the rest and renames."""
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
    if is_lora(state.policy):  # the adapters, and the base they apply to (adapter_config.json)
        state.policy.peft_config[ADAPTER].save_pretrained(tmp)
        if not state.sharded:
            save_file(adapter_state(state.policy), tmp / ADAPTER_WEIGHTS)
    elif state.sharded:
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
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)  # a checkpoint stays whole on disk at every moment: here as .old
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(directory: Path) -> None:
    """Put the previous checkpoint back if a save stopped between its two renames (``directory`` gone,
    ``directory.old`` whole). One process (rank 0) calls it before a resume."""
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and (old / STATE_FILE).is_file():
        old.rename(directory)


def load_checkpoint(directory: Path, state: TrainState) -> int:
    """Restore everything saved by `save_checkpoint` into ``state``; returns the step to continue from."""
    if state.sharded != (directory / SHARDS).is_dir():
        written = "sharded (parallel: fsdp)" if not state.sharded else "whole (one process or ddp)"
        raise ValueError(f"checkpoint {directory} was written {written}; resume it the way it was written, "
                         "or cgpo export it to start a new run from its weights")
    if is_lora(state.policy) != (directory / ADAPTER_CONFIG).is_file():
        written = "with LoRA adapters" if not is_lora(state.policy) else "for a fully fine-tuned policy"
        raise ValueError(f"checkpoint {directory} was written {written}; resume it with the lora settings it "
                         "was written with")
    if is_lora(state.policy):
        check_adapters(state.policy, directory)
    if state.sharded:
        _load_shards(state, directory / SHARDS)
    elif is_lora(state.policy):
        load_adapter_state(state.policy, load_file(directory / ADAPTER_WEIGHTS), directory)
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


def check_adapters(policy: Any, directory: Path) -> None:
    """Raise unless the checkpoint's adapters are the run's: rank, scale, targets and base model."""
    saved = json.loads((directory / ADAPTER_CONFIG).read_text())
    ours = policy.peft_config[ADAPTER]
    fields = {"r": (saved.get("r"), ours.r), "lora_alpha": (saved.get("lora_alpha"), ours.lora_alpha),
              "target_modules": (_targets(saved.get("target_modules")), _targets(ours.target_modules)),
              "base model": (saved.get("base_model_name_or_path"), ours.base_model_name_or_path)}
    differ = {name: pair for name, pair in fields.items() if pair[0] != pair[1]}
    if differ:
        described = "; ".join(f"{name}: checkpoint {a!r}, run {b!r}" for name, (a, b) in differ.items())
        raise ValueError(f"checkpoint {directory} holds other adapters than the run's ({described}); resume "
                         "with the lora settings and policy it was written with")


def _targets(targets: Any) -> Any:
    return targets if isinstance(targets, str) or targets is None else sorted(targets)


def export(checkpoint: Path, out: Path, merge: bool = False) -> Path:
    """A plain transformers directory (safetensors weights, config, tokenizer) from a checkpoint of either
    kind; a sharded one is read whole in this process (no process group needed). A LoRA checkpoint is
    written as a peft adapter directory (``PeftModel.from_pretrained``, vLLM's ``LoRARequest``) or, with
    ``merge``, as its base model with the adapters merged in (W + (α/r)·B A)."""
    from transformers import AutoTokenizer

    if not (checkpoint / STATE_FILE).is_file():
        raise ValueError(f"{checkpoint} is not a cgpo checkpoint (no {STATE_FILE})")
    lora = (checkpoint / ADAPTER_CONFIG).is_file()
    if merge and not lora:
        raise ValueError(f"{checkpoint} holds a fully fine-tuned policy: there are no adapters to merge")
    model = _adapted(checkpoint) if lora else _whole_model(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
    return out


def whole_policy(checkpoint: Path) -> Any:
    """The policy a checkpoint of any kind holds, as one unsharded fp32 transformers model (a LoRA policy
    with its adapters merged in)."""
    if not (checkpoint / STATE_FILE).is_file():
        raise ValueError(f"{checkpoint} is not a cgpo checkpoint (no {STATE_FILE})")
    if (checkpoint / ADAPTER_CONFIG).is_file():
        return _adapted(checkpoint).merge_and_unload().requires_grad_(True)  # as from_pretrained gives it
    return _whole_model(checkpoint)


def is_plain(checkpoint: Path) -> bool:
    """The checkpoint is itself a transformers model directory (neither sharded nor adapters)."""
    return not (checkpoint / SHARDS).is_dir() and not (checkpoint / ADAPTER_CONFIG).is_file()


def _whole_model(checkpoint: Path) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (checkpoint / SHARDS).is_dir():
        return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint), dtype=torch.float32)
    _load_whole_from_shards(model, checkpoint / SHARDS)
    return model


def _adapted(checkpoint: Path) -> Any:
    """The base model a LoRA checkpoint names, in fp32, with the checkpoint's adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig.from_pretrained(checkpoint)
    base = config.base_model_name_or_path
    try:
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), config)
    except OSError as exc:
        raise ValueError(f"{checkpoint}: its adapters apply to {base}, which cannot be loaded: {exc}") from None
    if (checkpoint / SHARDS).is_dir():
        adapters = {n for n, p in model.named_parameters() if p.requires_grad}
        _load_whole_from_shards(model, checkpoint / SHARDS, adapters)
    else:
        load_adapter_state(model, load_file(checkpoint / ADAPTER_WEIGHTS), checkpoint)
    return model


def _save_shards(state: TrainState, path: Path) -> None:
    """The policy's shards and, once AdamW has state (after its first step), the optimizer's: reading an
    empty optimizer's state dict would make it take a zero step, and change its bias correction."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    saved = {"model": get_model_state_dict(state.policy, options=_options(state.policy))}
    if state.optimizer.state:
        saved["optimizer"] = get_optimizer_state_dict(state.policy, state.optimizer)
    dcp.save(saved, checkpoint_id=str(path))


def _load_shards(state: TrainState, path: Path) -> None:
    """Each rank reads the parts of the saved shards that its own shards cover."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    options = _options(state.policy)
    saved = {"model": get_model_state_dict(state.policy, options=options)}
    dcp.load(saved, checkpoint_id=str(path))
    set_model_state_dict(state.policy, saved["model"], options=options)
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    if any(key.startswith("optimizer.") for key in stored):  # none saved before AdamW's first step
        optimizer = {"optimizer": get_optimizer_state_dict(state.policy, state.optimizer)}
        dcp.load(optimizer, checkpoint_id=str(path))
        set_optimizer_state_dict(state.policy, state.optimizer, optimizer["optimizer"])


def _load_whole_from_shards(model: Any, path: Path, names: set[str] | None = None) -> None:
    """Every saved shard of the weights (those in ``names``: all of them if None) into one unsharded model
    (the optimizer state is not read)."""
    import torch.distributed.checkpoint as dcp

    weights = {name: t for name, t in model.state_dict().items()
               if not _tied(model, name) and (names is None or name in names)}
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    absent = [name for name in weights if f"model.{name}" not in stored]
    if absent:
        raise ValueError(f"{path} does not match the model: it lacks {absent[:4]}")
    saved = {"model": weights}
    dcp.load(saved, checkpoint_id=str(path), planner=_weights_only_planner())
    missing, unexpected = model.load_state_dict(saved["model"], strict=False)
    if unexpected or (names is None and [m for m in missing if not _tied(model, m)]):
        raise ValueError(f"{path} does not match the model (missing {missing}, unexpected {unexpected})")


def _options(policy: Any) -> Any:
    """What a sharded checkpoint holds of the policy: every weight, or with LoRA the adapters only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = is_lora(policy)  # the frozen base is not saved, so it is not expected back either
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def _weights_only_planner() -> Any:
    """A load planner that reads the requested weights and leaves the rest of the checkpoint (the
    optimizer state) unread."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    return DefaultLoadPlanner(allow_partial_load=True)


def _load_whole(state: TrainState, directory: Path) -> None:
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
