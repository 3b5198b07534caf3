"""The batching policy: which waiting jobs run together, and when (pure; no I/O).

Workers and the embedded backend both hold a buffer of claimed jobs and ask
this policy two questions: *is it time to run?* (the batch is full, or the
oldest job has waited ``max_wait_ms``) and *which jobs?* (oldest first, up to
``max_items`` items; jobs past their deadline are dropped, never run). A single
job larger than the budget runs alone rather than starving: jobs are never split.
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

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError("max_items must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")

    def is_full(self, pending: Sequence[Pending[T]]) -> bool:
        return sum(p.items for p in pending) >= self.max_items

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
        items = 0
        for p in sorted(pending, key=lambda p: p.arrived_s):
            if p.deadline_s <= now_s:
                expired.append(p)
            elif not batch or items + p.items <= self.max_items:
                if rest:  # keep arrival order: nothing jumps a job that did not fit
                    rest.append(p)
                    continue
                batch.append(p)
                items += p.items
            else:
                rest.append(p)
        return Selection(batch, expired, rest)
