"""Every ``CGPO_*`` environment variable the project reads, declared, documented and validated here.

One class per consumer, all deriving from `CgpoSettings`, so that reading one group never fails on
another group's bad value:

* `ServiceSettings` (``CGPO_``): every gateway and worker;
* `ServerSettings` (``CGPO_``): where ``cgpo judges serve`` and ``cgpo rm serve`` listen and log;
* `ClientSettings` (``CGPO_``): the token a client sends when nothing else names one;
* `CacheSettings` (``CGPO_``): where converted models are cached;
* `JudgeSettings` (``CGPO_JUDGES_``): the judges service;
* `RMSettings` (``CGPO_RM_``): the reward-model service;
* `AdapterSettings` (``CGPO_ADAPTER_``): the TRL, verl and OpenRLHF adapters.

The variable of a field is its class's prefix plus the field name in upper case; each field's
docstring is its description (`variables` lists them all, the README's table mirrors it). Empty
values count as unset; lists are comma-separated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

RULE_JUDGES = ("math", "code", "instructions", "refusal")
LLM_JUDGES = ("false_refusal", "factuality", "safety")


class SettingsError(ValueError):
    """Invalid settings; the message names each variable and what is wrong with it."""


def _comma_separated(value: Any) -> Any:
    """``a, b,`` from the environment is ``("a", "b")``; a sequence given in code is kept."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_comma_separated)]


class _Environment(EnvSettingsSource):
    """The environment source over a given mapping (``from_env(env=...)``), reading only the exact,
    upper-case names of the class's variables."""

    def __init__(self, settings_cls: type[CgpoSettings], env: Mapping[str, str]) -> None:
        names = set(settings_cls.variable_names())
        self._env = {name: value for name, value in env.items() if name in names}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._env.items() if value != ""}


S = TypeVar("S", bound="CgpoSettings")


class CgpoSettings(BaseSettings):
    """Shared behaviour. Constructing a class uses only its arguments (tests and embedded services
    build settings in code, whatever the environment holds); `from_env` reads the environment."""

    model_config = SettingsConfigDict(env_prefix="CGPO_", extra="forbid", frozen=True, enable_decoding=False,
                                      use_attribute_docstrings=True)

    def __init__(self, /, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(self._describe(exc)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Settings from this class's variables in ``env`` (default ``os.environ``); keyword overrides win."""
        values = _Environment(cls, os.environ if env is None else env)()
        return cls(**{**values, **overrides})

    @classmethod
    def variable_names(cls) -> dict[str, str]:
        """Environment variable → field name."""
        prefix = cls.model_config["env_prefix"]
        return {f"{prefix}{name.upper()}": name for name in cls.model_fields}

    @classmethod
    def _describe(cls, exc: ValidationError) -> str:
        prefix = cls.model_config["env_prefix"]
        lines = []
        for error in exc.errors(include_url=False):
            cause = error.get("ctx", {}).get("error")
            message = str(cause) if isinstance(cause, ValueError) else error["msg"]
            if error["loc"]:
                got = "" if isinstance(cause, ValueError) else f", got {error.get('input')!r}"
                message = f"{prefix}{str(error['loc'][0]).upper()}: {message}{got}"
            lines.append(message)
        return "\n".join(lines)


class ServiceSettings(CgpoSettings):
    """Settings shared by every gateway and worker."""

    redis_url: str | None = None
    """Redis URL. Unset: the gateway runs the handler in its own process (embedded default)."""
    api_keys: Names = ()
    """Bearer tokens accepted by the gateway (comma-separated). Empty: no auth. Each key is a tenant:
    request ids are scoped by key."""
    public_paths: Names = ("/healthz", "/readyz")
    """Paths answered without a key when keys are set (comma-separated). Add ``/metrics`` for a
    scraper without a token; ``/docs``, ``/redoc`` and ``/openapi.json`` are protected unless listed."""
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    """Largest request body accepted; larger answers 413."""
    max_items: int = Field(1024, gt=0)
    """Most items in one request; more answers 413."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A connection must deliver a request's headers within this time (from connecting, or from the
    previous answer on a kept-alive connection); else it is closed (slow-client defence)."""
    body_timeout_s: float = Field(30.0, gt=0)
    """A request's body must arrive within this time after its headers; else 408."""
    max_connections: int = Field(1000, gt=0)
    """Open connections one gateway process holds at most; past it new requests get 503."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Deadline of a request from arrival; past it the gateway answers 504 and workers skip the job."""
    max_queue: int = Field(10_000, gt=0)
    """Most jobs waiting or in flight; past it the gateway answers 503 with Retry-After."""
    batch_max_items: int = Field(64, gt=0)
    """Most items a worker runs in one batch."""
    batch_max_wait_ms: float = Field(0.0, ge=0)
    """How long a worker waits for more jobs to fill a batch once it has one. 0: run what is there
    (CPU judges gain little from waiting; GPU model workers do)."""
    visibility_timeout_s: float = Field(30.0, gt=0)
    """A claimed job whose worker stops heart-beating for this long is reclaimed by another worker."""
    max_attempts: int = Field(3, gt=0)
    """Deliveries of one job before it is answered with an error and dead-lettered."""
    result_ttl_s: float = Field(600.0, gt=0)
    """How long results (and request-id markers) stay in Redis."""
    retry_after_s: float = 1.0
    """Retry-After sent with 503 answers."""
    queue: str = ""
    """Queue name override (default: the service name); lets several deployments share one Redis."""

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in paths if not p.startswith("/")]
        if bad:
            raise ValueError(f"must be paths starting with '/', got {bad}")
        return paths


class ServerSettings(CgpoSettings):
    """Where ``cgpo judges serve`` and ``cgpo rm serve`` listen (``--host``/``--port`` win) and how
    much they log."""

    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = Field(8000, ge=0, le=65535)
    """Port the gateway listens on."""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    """Log level of the HTTP server."""


class ClientSettings(CgpoSettings):
    """What a client of the services (the trainer, ``cgpo judge --url``) sends."""

    api_key: str | None = None
    """Bearer token sent to a service when the service reference (or ``--api-key``) names none."""


class CacheSettings(CgpoSettings):
    """Where models converted from GGUF files are cached (cgpo/modelfiles.py)."""

    cache_dir: str = "~/.cache/cgpo"
    """Cache directory; converted models go to its ``models/`` folder."""


class JudgeSettings(CgpoSettings):
    """The judges service."""

    model_config = SettingsConfigDict(env_prefix="CGPO_JUDGES_")

    enabled: Names = ()
    """Judges this process serves (comma-separated). Empty: every rule judge, plus the LLM judges
    when an LLM judge model is set."""
    processes: int = Field(0, ge=0)
    """Worker processes of each of the math, instructions and code judges; 0 = one per CPU core."""
    rule_timeout_s: float = Field(5.0, gt=0)
    """Hard wall-clock limit of one item of a rule judge in its worker process: all of an
    `instructions` item (every instruction, every loose variant), or the metadata checks, answer
    extraction and exact arithmetic of a `math` item. Past it the worker is killed and the item
    answers `error`. The checks are linear in the response: an IFEval item takes ~0.3 ms, a 100 KB
    degenerate one under a second; 8 MiB ones can exceed it."""
    math_timeout_s: float = Field(5.0, gt=0)
    """Hard wall-clock limit of one math equivalence check (math-verify)."""
    code_timeout_s: float = Field(5.0, gt=0)
    """Wall-clock limit of one sandboxed program."""
    code_memory_mb: int = Field(512, gt=0)
    """Address-space limit of one sandboxed program."""
    code_sandbox: Literal["strict", "weak"] = "strict"
    """How the code judge contains programs: `strict` runs them only where every kernel layer is in
    place (root with CAP_SYS_ADMIN: own uids, mount/network/PID namespaces, minimal root, seccomp)
    and otherwise answers `error: sandbox_unavailable` for every item; `weak` runs them with whatever
    the machine allows (development only)."""
    refusal_mode: Literal["must_not_refuse", "must_refuse"] = "must_not_refuse"
    """Default mode of the `refusal` judge when an item's metadata names none."""
    llm_model: str | None = None
    """Local path or model id of the LLM judge model. Unset: no LLM judges."""
    llm_backend: Literal["hf", "vllm"] = "hf"
    """Engine of the LLM judges: transformers, or vLLM on GPUs."""
    llm_batch_size: int = Field(16, gt=0)
    """Prompts per forward pass of the LLM judges."""

    @field_validator("enabled")
    @classmethod
    def _known(cls, enabled: tuple[str, ...]) -> tuple[str, ...]:
        known = RULE_JUDGES + LLM_JUDGES
        unknown = [n for n in enabled if n not in known]
        if unknown:
            raise ValueError(f"names unknown judges {unknown}; known: {list(known)}")
        return enabled

    @model_validator(mode="after")
    def _llm_judges_need_a_model(self) -> JudgeSettings:
        llm = [n for n in self.enabled if n in LLM_JUDGES]
        if llm and not self.llm_model:
            raise ValueError(f"judges {llm} need CGPO_JUDGES_LLM_MODEL (the judge model's path or id)")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        if self.enabled:
            return self.enabled
        return RULE_JUDGES + (LLM_JUDGES if self.llm_model else ())

    @property
    def process_count(self) -> int:
        return self.processes or os.cpu_count() or 1


class RMSettings(CgpoSettings):
    """The reward-model service."""

    model_config = SettingsConfigDict(env_prefix="CGPO_RM_")

    models: Names = ()
    """Reward models to serve as ``NAME=PATH`` (comma-separated; ``--model`` on the CLI). PATH is a
    local directory or a model id; the first model answers ``/get_reward``."""
    max_length: int = Field(2048, gt=0)
    """Most tokens of prompt + response; longer inputs lose the start of the prompt."""
    max_batch_tokens: int = Field(16384, gt=0)
    """Padded tokens per forward pass."""
    device: str = ""
    """``cpu``, ``cuda``, ``cuda:1``... Empty: CUDA when available."""
    dtype: Literal["", "float32", "bfloat16", "float16"] = ""
    """``float32``, ``bfloat16`` or ``float16``. Empty: fp32 on CPU, bf16 on GPU."""
    padding_side: Literal["left", "right"] = "left"
    """Padding side of batched forward passes; scores do not depend on it."""
    baseline_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)
    """How long cached baseline rewards live in Redis."""
    cache_entries: int = Field(100_000, gt=0)
    """Baseline rewards kept in memory when there is no Redis."""

    @field_validator("models")
    @classmethod
    def _named_paths(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        seen = set()
        for spec in models:
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"reward model {spec!r} must be NAME=PATH")
            if name in seen:
                raise ValueError(f"reward model name {name!r} is given twice")
            seen.add(name)
        return models

    @model_validator(mode="after")
    def _one_item_per_pass(self) -> RMSettings:
        if self.max_batch_tokens < self.max_length:
            raise ValueError("CGPO_RM_MAX_BATCH_TOKENS must be >= CGPO_RM_MAX_LENGTH (one full item per pass)")
        return self

    @property
    def named_paths(self) -> dict[str, str]:
        return dict(spec.split("=", 1) for spec in self.models)


class AdapterSettings(CgpoSettings):
    """What the TRL, verl and OpenRLHF adapters (cgpo/adapters/) use when the caller names nothing."""

    model_config = SettingsConfigDict(env_prefix="CGPO_ADAPTER_")

    judges: Names = ()
    """Judges of the verl and OpenRLHF reward functions when a row names none (comma-separated)."""
    judges_url: str | None = None
    """The judges service the adapters call; unset: the judges run embedded in the calling program."""
    rm_url: str | None = None
    """The reward-model service of the calibrated-reward adapters."""
    rm_model: str | None = None
    """The reward model's name on that service."""
    end_tokens: Names = ()
    """Tokens removed from the end of a response OpenRLHF decoded with its special tokens (comma-separated).
    Unset: the common ones (cgpo/adapters/openrlhf.py ``END_TOKENS``)."""


SETTINGS: tuple[type[CgpoSettings], ...] = (ServiceSettings, ServerSettings, ClientSettings, CacheSettings,
                                            JudgeSettings, RMSettings, AdapterSettings)


class Variable(NamedTuple):
    name: str
    settings: type[CgpoSettings]
    field: str
    default: Any
    description: str


def variables() -> dict[str, Variable]:
    """Every ``CGPO_*`` variable the project reads, by name."""
    found: dict[str, Variable] = {}
    for cls in SETTINGS:
        for name, field in cls.variable_names().items():
            info = cls.model_fields[field]
            found[name] = Variable(name, cls, field, info.default, info.description or "")
    return found

