"""The wire contract shared by gateways, workers, clients and tests.

Every public request and response body is defined here once. Models forbid
unknown fields so a misspelt key is a 422, not a silently ignored option.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- errors


class ErrorBody(Strict):
    code: str = Field(description="Stable machine-readable error code, e.g. `unknown_judge`.")
    message: str = Field(description="Human-readable explanation.")
    detail: Any = Field(default=None, description="Structured context (validation errors, known names).")


class ErrorEnvelope(Strict):
    """The one error shape every endpoint answers with on a non-2xx status."""

    error: ErrorBody


# ---------------------------------------------------------------- judges

VerdictName = Literal["pass", "fail", "error"]


class Verdict(Strict):
    verdict: VerdictName
    detail: dict[str, Any] = Field(default_factory=dict)


class JudgeItem(Strict):
    prompt: str = Field(description="The prompt the response answers.")
    response: str = Field(description="The response to judge.")
    judges: list[str] = Field(min_length=1, description="Judge names; the item is feasible iff all pass.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="What the judges need: `answer`, `unit_tests`, `instruction_id_list`, ... (GET /v1/judges).",
    )


class JudgeRequest(Strict):
    items: list[JudgeItem] = Field(min_length=1)


class JudgeResult(Strict):
    feasible: bool = Field(description="True iff every requested judge answered `pass`.")
    verdicts: dict[str, Verdict]


class JudgeResponse(Strict):
    results: list[JudgeResult] = Field(description="One result per item, in request order.")


class JudgeInfo(Strict):
    name: str
    description: str
    metadata: dict[str, str] = Field(description="Metadata fields the judge reads, with their meaning.")


class JudgeList(Strict):
    judges: list[JudgeInfo]


# ---------------------------------------------------------------- health


class Health(Strict):
    status: Literal["ok", "unavailable"]
    mode: Literal["embedded", "queue"]
    detail: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- queue (internal)


class Job(Strict):
    """What a gateway puts on the queue: one HTTP request's items, judged together."""

    id: str
    items: list[dict[str, Any]]
    deadline: float = Field(description="Unix time after which the job is answered 504, not run.")


class JobResult(Strict):
    """What a worker stores under the job id: outputs in item order, or one error."""

    id: str
    outputs: list[dict[str, Any]] | None = None
    error: ErrorBody | None = None
