"""LoRA (``lora: {r, alpha, dropout, target_modules}``): the policy trains low-rank adapters through peft.

The policy is the base model with an adapter on each targeted linear, W x + (α/r)·B A x, ``A`` (r, in)
initialised at random and ``B`` (out, r) at zero, so training starts from the base model exactly. Only
the adapters are trained: AdamW, the gradients and their all-reduce or reduce-scatter cover them alone.
The frozen base is held in bf16 under ``precision: bf16`` and in fp32 otherwise; the adapters are fp32.

π_ref is the same modules with the adapters switched off (`AdapterDisabled`): no second copy of the
weights, and log π_ref is exactly the base model's (in the run's precision: a bf16 run's base is held in
bf16, which its bf16 compute would round the weights to anyway). Adapters go on the linears of the
decoder layers only: an adapter on the embeddings or on a tied LM head would not merge into one weight.

Checkpoints hold the adapters (and the base's location, checked on resume with the rank, scale and
targets); ``cgpo export`` writes them as a peft adapter directory or, with ``--merge``, as the base with
W + (α/r)·B A merged in. The vLLM engine receives the merged weights (`full_weights`), so it decodes at
the base model's speed with no adapter kernels, and its sync is the same as for full fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ADAPTER = "default"
"""peft's name for the one adapter a run trains."""


def add_adapters(model: Any, settings: Any, base: str, bf16: bool) -> Any:
    """``model`` (a transformers causal LM) wrapped by peft with fresh adapters per ``settings`` (the run
    config's ``lora``); the base frozen, in bf16 when ``bf16``. ``base`` is recorded as the location the
    checkpoints' adapters apply to."""
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        task_type="CAUSAL_LM", base_model_name_or_path=_location(base))
    try:
        policy = get_peft_model(model, config)
    except ValueError as exc:  # peft: none of the target modules exist in the model
        raise ValueError(f"lora.target_modules: {exc}") from None
    outside = sorted({name.rsplit(".", 1)[-1] for name, module in policy.named_modules()
                      if hasattr(module, "lora_A") and not _in_a_layer_linear(name, module)})
    if outside:
        raise ValueError(f"lora.target_modules: {', '.join(outside)} is not a linear of a decoder layer; adapters "
                         "go on the layers' projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                         "down_proj), where they merge exactly and sync to vLLM")
    if bf16:
        for p in policy.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return policy


def _in_a_layer_linear(name: str, module: Any) -> bool:
    base = getattr(module, "base_layer", None)
    return isinstance(base, torch.nn.Linear) and ".layers." in name


def is_lora(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class AdapterDisabled:
    """π_ref of a LoRA run: the policy's modules with the adapters off, for every forward it runs.

    It answers what the trainer asks a model (``device``, ``config``, ``forward``, ``eval``/``train``,
    ``generation_config``); its training mode is the policy's (the passes run in eval mode)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)

    forward = __call__

    def get_base_model(self) -> Any:
        return self.policy.get_base_model()

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def config(self) -> Any:
        return self.policy.config

    @property
    def generation_config(self) -> Any:
        return getattr(self.get_base_model(), "generation_config", None)

    @property
    def training(self) -> bool:
        return self.policy.training

    def eval(self) -> AdapterDisabled:
        self.policy.eval()
        return self

    def train(self, mode: bool = True) -> AdapterDisabled:
        self.policy.train(mode)
        return self


def full_weights(model: Any, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``model``'s weights one tensor at a time under the base checkpoint's names, whole and detached:
    a sharded (FSDP2) tensor is all-gathered (every rank must iterate, in this same order), a LoRA
    adapter is merged into its base weight (W + (α/r)·B A, in fp32), nothing is held past its turn.
    ``dtype``: cast each tensor (e.g. bf16 for a bf16 vLLM engine)."""
    module = getattr(model, "module", model)  # a DDP wrapper
    lora = is_lora(module)
    layers = dict(module.named_modules()) if lora else {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if lora and (".lora_" in name or ".lora_magnitude" in name):
            continue  # merged into their base weight below
        with torch.no_grad():
            value = _whole(tensor)
            if lora and name.endswith(".base_layer.weight"):
                value = value.float() + _delta(layers[name.removesuffix(".base_layer.weight")])
            out = value if dtype is None else value.to(dtype)
        yield (_base_name(name) if lora else name), out


def _delta(layer: Any) -> torch.Tensor:
    """The adapter's (α/r)·B A of one peft LoRA linear, whole, in fp32."""
    if ADAPTER not in getattr(layer, "lora_A", {}) or getattr(layer, "fan_in_fan_out", False):
        raise ValueError(f"{type(layer).__name__}: only LoRA adapters on plain linears can be merged")
    a = _whole(layer.lora_A[ADAPTER].weight).float()  # (r, in)
    b = _whole(layer.lora_B[ADAPTER].weight).float()  # (out, r)
    return (b @ a) * float(layer.scaling[ADAPTER])


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    full = getattr(tensor, "full_tensor", None)  # a DTensor: this rank's shard; gather all of them
    return (full() if full is not None else tensor).detach()


def _base_name(name: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` -> the base checkpoint's
    ``model.layers.0.self_attn.q_proj.weight``."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def adapter_state(policy: Any) -> dict[str, torch.Tensor]:
    """The trained adapter tensors, under peft's names (as ``save_pretrained`` writes them)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(policy)


def load_adapter_state(policy: Any, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Put saved adapter tensors back; every adapter tensor must be among them."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(policy, weights)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{where} does not match the run's adapters (missing {missing[:4]}, unexpected "
                         f"{list(result.unexpected_keys)[:4]}); resume with the lora settings it was written with")


def _location(base: str) -> str:
    """A local base model's absolute path (an exported adapter finds its base from anywhere)."""
    path = Path(base)
    return str(path.resolve()) if path.exists() else base
