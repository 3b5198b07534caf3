"""Forward-pass precision: what ``precision: fp32 | bf16`` means when a model runs.

The trainer, its set-up steps and the data tools outside it (``cgpo.instructions``) all run the
policy under the same rule, so it lives here, below all of them, rather than in the training loop.
torch is imported on use: the services and the CLI import this package without the ``models`` extra.
"""

from __future__ import annotations

from typing import Any


def autocast(precision: str, model: Any) -> Any:
    """The forward-pass precision (``RunConfig.precision``) on the model's device (a no-op for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)
