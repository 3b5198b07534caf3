"""Tensor helpers the three losses share: masked arg-max, an empty-safe mean, and input checks."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_argmax(values: Tensor, mask: Tensor) -> Tensor:
    """(B, K) → (B,) index of the largest value where ``mask``; first one on ties; 0 if none."""
    return torch.where(mask, values, float("-inf")).argmax(dim=1)


def safe_mean(per_item: Tensor) -> Tensor:
    """Mean over dim 0 that is 0, not NaN, when there are no items (and stays in the graph)."""
    return per_item.sum() / max(per_item.shape[0], 1)


def check_finite(**tensors: Tensor) -> None:
    """A NaN or ±inf reward would poison CRPG's batch mean or win/tie a masked arg-max (CODPO, CRRAFT)."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} must be finite")


def check_shapes(shape: tuple[int, ...], **tensors: Tensor) -> None:
    """Fail loudly on a shape mismatch (broadcasting would silently mix samples) or a non-bool mask."""
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        if (name.endswith("feasible") or name == "include") and tensor.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {tensor.dtype}")
