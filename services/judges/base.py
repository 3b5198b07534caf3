"""The judge contract: one verdict per sample, in order (docs/method.md §2).

A judge maps (prompt, response, metadata) to ``pass`` / ``fail`` / ``error``.
``error`` means the judge could not decide (timeout, crash, malformed metadata);
it is never turned into ``pass`` here — the caller decides what it means.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from cgpo.services.common.schemas import Verdict


@dataclass(frozen=True)
class Sample:
    """One (prompt, response) pair with the prompt's metadata, as a judge sees it."""

    prompt: str
    response: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def passed(**detail: Any) -> Verdict:
    return Verdict(verdict="pass", detail=detail)


def failed(**detail: Any) -> Verdict:
    return Verdict(verdict="fail", detail=detail)


def errored(reason: str, **detail: Any) -> Verdict:
    return Verdict(verdict="error", detail={"error": reason, **detail})


class Judge(ABC):
    """Base class: subclasses set the class attributes and implement ``judge``.

    ``setup`` runs once per process before the first batch (load models, start
    process pools). ``judge`` must return exactly one verdict per sample, in
    order, and must not raise for a bad sample: it answers ``error`` for it.
    ``deadline`` (Unix time) is when the caller stops waiting: a judge whose
    work can run long stops there and answers ``error`` for what is not done.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    # metadata field -> what it means; shown by GET /v1/judges.
    metadata_fields: ClassVar[dict[str, str]] = {}

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load what the judge needs; called once before the first batch."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes or models started by ``setup``."""

    def __enter__(self) -> Self:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def judge(self, samples: Sequence[Sample], *, deadline: float | None = None) -> list[Verdict]:
        """One verdict per sample, in order."""
