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


# ---------------------------------------------------------------- reward models


class ScoreItem(Strict):
    prompt: str
    response: str
    baseline: str | None = Field(default=None, description="Reference response ā for the calibrated reward.")


class ScoreRequest(Strict):
    model: str = Field(description="Name of the reward model (GET /v1/models).")
    items: list[ScoreItem] = Field(min_length=1)


class ScoreResult(Strict):
    reward: float = Field(description="Raw Bradley-Terry reward r(s, a).")
    baseline_reward: float | None = Field(default=None, description="r(s, ā) when a baseline was given.")
    calibrated: float | None = Field(default=None, description="σ(r(s, a) − r(s, ā)) when a baseline was given.")
    truncated: bool = Field(description="The input exceeded the model's max length; the prompt's start was cut.")


class ScoreResponse(Strict):
    results: list[ScoreResult] = Field(description="One result per item, in request order.")


class ModelInfo(Strict):
    name: str
    max_length: int
    dtype: str
    device: str


class ModelList(Strict):
    models: list[ModelInfo]


class RewardQuery(BaseModel):
    """OpenRLHF's remote reward-model request (`--remote_rm_url`): full texts, optional prompts and labels."""

    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(min_length=1, description="Full texts (prompt + response, already formatted).")
    prompts: list[str] | None = Field(default=None, description="The prompt part of each query, if known.")
    labels: list[Any] | None = Field(default=None, description="Accepted for compatibility; not used.")


class RewardAnswer(Strict):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = Field(default_factory=dict)


class RMItem(Strict):
    """One scoring job item as queued (internal): a (prompt, response) pair, or a pre-formatted text."""

    model: str
    prompt: str
    response: str = ""
    baseline: str | None = None
    text: str | None = Field(default=None, description="Pre-formatted full text (OpenRLHF protocol).")
