"""The batching policy: which waiting jobs run together, and when (pure; no I/O).

Workers and the embedded backend both hold a buffer of claimed jobs and ask
this policy two questions: *is it time to run?* (the batch is full, or the
oldest job has waited ``max_wait_ms``) and *which jobs?* (oldest first, up to
``max_items`` items and ``max_tokens`` tokens; jobs past their deadline are
dropped, never run). A single job larger than the budget runs alone rather
than starving: jobs are never split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Pending(Generic[T]):
    """A claimed job as the policy sees it."""

    job: T
    items: int
    arrived_s: float
    deadline_s: float
    tokens: int = 0


@dataclass(frozen=True)
class Selection(Generic[T]):
    batch: list[Pending[T]]
    expired: list[Pending[T]]
    rest: list[Pending[T]]


@dataclass(frozen=True)
class BatchPolicy:
    max_items: int = 64
    """Most items in one batch."""
    max_wait_ms: float = 2.0
    """Longest the oldest job waits for company once claimed."""
    max_tokens: int | None = None
    """Most tokens in one batch (None: unbounded)."""

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError("max_items must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1 or None")

    def is_full(self, pending: Sequence[Pending[T]]) -> bool:
        items = sum(p.items for p in pending)
        tokens = sum(p.tokens for p in pending)
        return items >= self.max_items or (self.max_tokens is not None and tokens >= self.max_tokens)

    def wait_left_s(self, pending: Sequence[Pending[T]], now_s: float) -> float:
        """Seconds to keep waiting for more jobs; 0 means run now."""
        if not pending or self.is_full(pending):
            return 0.0
        oldest = min(p.arrived_s for p in pending)
        return max(0.0, oldest + self.max_wait_ms / 1000.0 - now_s)

    def select(self, pending: Sequence[Pending[T]], now_s: float) -> Selection[T]:
        """Split ``pending`` (oldest first) into the batch to run, the expired, and the rest."""
        batch: list[Pending[T]] = []
        expired: list[Pending[T]] = []
        rest: list[Pending[T]] = []
        items = tokens = 0
        for p in sorted(pending, key=lambda p: p.arrived_s):
            if p.deadline_s <= now_s:
                expired.append(p)
            elif not batch or self._fits(items + p.items, tokens + p.tokens):
                if rest:  # keep arrival order: nothing jumps a job that did not fit
                    rest.append(p)
                    continue
                batch.append(p)
                items, tokens = items + p.items, tokens + p.tokens
            else:
                rest.append(p)
        return Selection(batch, expired, rest)

    def _fits(self, items: int, tokens: int) -> bool:
        return items <= self.max_items and (self.max_tokens is None or tokens <= self.max_tokens)
