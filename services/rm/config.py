"""Reward-model service settings (``CGPO_RM_*``), validated in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cgpo.services.common.settings import load_env


@dataclass(frozen=True)
class RMConfig:
    models: tuple[str, ...] = ()
    """Reward models to serve as ``NAME=PATH`` (CGPO_RM_MODELS, comma-separated; ``--model`` on the CLI).
    PATH is a local directory or a model id; the first model answers ``/get_reward``."""
    max_length: int = 2048
    """Most tokens of prompt + response; longer inputs lose the start of the prompt (CGPO_RM_MAX_LENGTH)."""
    max_batch_tokens: int = 16384
    """Padded tokens per forward pass (CGPO_RM_MAX_BATCH_TOKENS)."""
    device: str = ""
    """``cpu``, ``cuda``, ``cuda:1``... (CGPO_RM_DEVICE). Empty: CUDA when available."""
    dtype: str = ""
    """``float32``, ``bfloat16`` or ``float16`` (CGPO_RM_DTYPE). Empty: fp32 on CPU, bf16 on GPU."""
    padding_side: str = "left"
    """Padding side of batched forward passes (CGPO_RM_PADDING_SIDE); scores do not depend on it."""
    baseline_ttl_s: float = 7 * 24 * 3600.0
    """How long cached baseline rewards live in Redis (CGPO_RM_BASELINE_TTL_S)."""
    cache_entries: int = 100_000
    """Baseline rewards kept in memory when there is no Redis (CGPO_RM_CACHE_ENTRIES)."""

    def __post_init__(self) -> None:
        seen = set()
        for spec in self.models:
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"reward model {spec!r} must be NAME=PATH")
            if name in seen:
                raise ValueError(f"reward model name {name!r} is given twice")
            seen.add(name)
        for field in ("max_length", "max_batch_tokens", "baseline_ttl_s", "cache_entries"):
            if getattr(self, field) <= 0:
                raise ValueError(f"CGPO_RM_{field.upper()} must be > 0")
        if self.max_batch_tokens < self.max_length:
            raise ValueError("CGPO_RM_MAX_BATCH_TOKENS must be >= CGPO_RM_MAX_LENGTH (one full item per pass)")
        if self.dtype not in ("", "float32", "bfloat16", "float16"):
            raise ValueError("CGPO_RM_DTYPE must be float32, bfloat16 or float16")
        if self.padding_side not in ("left", "right"):
            raise ValueError("CGPO_RM_PADDING_SIDE must be left or right")

    @property
    def named_paths(self) -> dict[str, str]:
        return dict(spec.split("=", 1) for spec in self.models)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> RMConfig:
        return load_env(cls, "CGPO_RM_", env, **overrides)
