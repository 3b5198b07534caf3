"""The wire contract shared by gateways, workers, clients and tests.

Every public request and response body is defined here once. Models forbid
unknown fields so a misspelt key is a 422, not a silently ignored option.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from cgpo.services.common.errors import ServiceError

# A lone UTF-16 surrogate: Python's json module decodes "\ud800" into one, but it is not a
# character, no UTF-8 text can carry it, and it would fail every later step (Redis, tokenizers, JSON
# answers). Requests are refused with it; outputs have it replaced (U+FFFD).
_SURROGATE = re.compile("[\ud800-\udfff]")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _surrogate_path(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where in ``value`` (nested dicts, lists, strings) a lone surrogate sits; None if nowhere."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _surrogate_path(key, (*path, key)) or _surrogate_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _surrogate_path(item, (*path, i))
            if found is not None:
                return found
    return None


class Request(Strict):
    """A public request body: any text in it must be valid Unicode (checked before anything else)."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        path = _surrogate_path(data)
        if path is not None:
            where = ".".join(map(str, path)) or "body"
            raise PydanticCustomError("lone_surrogate", "text at {where} contains a lone UTF-16 surrogate "
                                      "(an unpaired \\ud800-\\udfff escape), which is not a character",
                                      {"where": _SURROGATE.sub("\ufffd", where)})
        return data


def scrub_text(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {scrub_text(k): scrub_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_text(v) for v in value]
    return value


# ---------------------------------------------------------------- errors


class ErrorBody(Strict):
    code: str = Field(description="Stable machine-readable error code, e.g. `unknown_judge`.")
    message: str = Field(description="Human-readable explanation.")
    detail: Any = Field(default=None, description="Structured context (validation errors, known names).")

    @classmethod
    def of(cls, err: ServiceError) -> ErrorBody:
        """The wire form of a typed error: codes are written only from the error classes."""
        return cls(code=err.code, message=err.message, detail=err.detail)


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


class JudgeRequest(Request):
    items: list[JudgeItem] = Field(min_length=1)


class JudgeResult(Strict):
    feasible: bool = Field(description="True iff every requested judge answered `pass`.")
    verdicts: dict[str, Verdict]


class JudgeResponse(Strict):
    results: list[JudgeResult] = Field(description="One result per item, in request order.")


REQUIRED_METADATA: dict[str, tuple[tuple[str, ...], ...]] = {
    "math": (("answer",),),
    "code": (("unit_tests", "test+entry_point"),),
    "instructions": (("instruction_id_list",),),
    "refusal": (),
    "false_refusal": (),
    "factuality": (("answer",),),
    "safety": (),
}
"""The metadata every sample a judge scores must carry (not null): each inner tuple lists alternatives, one
of which must be present, an alternative naming one field or several joined by ``+`` (all of them).
Callers check their data against it before sending any (``cgpo train``'s pre-flight); the judges answer
``error`` for a sample without it."""


def lacks_required(required: tuple[tuple[str, ...], ...] | list[list[str]], metadata: dict) -> list[str]:
    """The required groups ``metadata`` satisfies none of, each as ``a or b+c``."""
    def present(alternative: str) -> bool:
        return all(metadata.get(field) is not None for field in alternative.split("+"))

    return [" or ".join(group) for group in required if not any(present(a) for a in group)]


class JudgeInfo(Strict):
    name: str
    description: str
    metadata: dict[str, str] = Field(description="Metadata fields the judge reads, with their meaning.")
    required: list[list[str]] = Field(default_factory=list, description=(
        "Metadata every sample must carry: each inner list holds alternatives, one of which must be present; "
        "an alternative is a field or fields joined by '+' (all of them)."))


class JudgeList(Strict):
    judges: list[JudgeInfo]


# ---------------------------------------------------------------- health


class Health(Strict):
    status: Literal["ok", "unavailable"]
    mode: Literal["embedded", "queue"]
    detail: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- queue (internal)


class QueueJob(Strict):
    """What a gateway puts on the queue: one HTTP request's items, judged together."""

    id: str
    items: list[dict[str, Any]]
    deadline: float = Field(description="Unix time after which the job is answered 504, not run.")


class JobResult(Strict):
    """What a worker stores under the job id: outputs in item order, or one error."""

    id: str
    outputs: list[dict[str, Any]] | None = None
    error: ErrorBody | None = None

    @classmethod
    def failed(cls, job_id: str, err: ServiceError) -> JobResult:
        """The job answered with ``err`` instead of outputs."""
        return cls(id=job_id, error=ErrorBody.of(err))


# ---------------------------------------------------------------- reward models


class ChatMessage(Strict):
    role: str = Field(min_length=1, description="`system`, `user`, `assistant`, ... as the chat template names them.")
    content: str


class ScoreItem(Strict):
    prompt: str
    response: str
    baseline: str | None = Field(default=None, description="Reference response ā for the calibrated reward.")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, exclude_if=lambda v: v is None,
        description="The whole conversation the response answers (optional): the model encodes it with its "
                    "chat template, then the response as the assistant turn; `prompt` is then its last user turn.")


class ScoreRequest(Request):
    model: str = Field(description="Name of the reward model (GET /v1/models).")
    items: list[ScoreItem] = Field(min_length=1)


class ScoreResult(Strict):
    reward: float | None = Field(description="Raw Bradley-Terry reward r(s, a); null only when `error` is set.")
    baseline_reward: float | None = Field(default=None, description="r(s, ā) when a baseline was given.")
    calibrated: float | None = Field(default=None, description="σ(r(s, a) − r(s, ā)) when a baseline was given.")
    truncated: bool = Field(description="The input exceeded the model's max length; the prompt's start was cut.")
    error: ErrorBody | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="Why this item was not scored (e.g. `unknown_model`: the worker serves no model of that "
                    "name); the request's other items are scored all the same.")

    @classmethod
    def unscored(cls, err: ServiceError) -> ScoreResult:
        """The answer for an item that could not be scored: ``err`` in place of a reward."""
        return cls(reward=None, truncated=False, error=ErrorBody.of(err))


class ScoreResponse(Strict):
    results: list[ScoreResult] = Field(description="One result per item, in request order.")


class ModelInfo(Strict):
    name: str
    max_length: int
    dtype: str
    device: str


class ModelList(Strict):
    models: list[ModelInfo]


class RewardQuery(Request):
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
    messages: list[ChatMessage] | None = Field(default=None, exclude_if=lambda v: v is None,
                                               description="The conversation before the response (ScoreItem).")
