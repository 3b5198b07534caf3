"""Service settings, read from ``CGPO_*`` environment variables and validated in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar


@dataclass(frozen=True)
class ServiceSettings:
    """Settings shared by every gateway and worker (env var = ``CGPO_`` + field name, upper case)."""

    redis_url: str | None = None
    """Redis URL. Unset: the gateway runs the handler in its own process (embedded default)."""
    api_keys: tuple[str, ...] = ()
    """Bearer tokens accepted by the gateway (comma-separated). Empty: no auth. Each key is a tenant:
    request ids are scoped by key."""
    public_paths: tuple[str, ...] = ("/healthz", "/readyz")
    """Paths answered without a key when keys are set (comma-separated). Add ``/metrics`` for a
    scraper without a token; ``/docs``, ``/redoc`` and ``/openapi.json`` are protected unless listed."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted; larger answers 413."""
    max_items: int = 1024
    """Most items in one request; more answers 413."""
    header_timeout_s: float = 10.0
    """A connection must deliver a request's headers within this time (from connecting, or from the
    previous answer on a kept-alive connection); else it is closed (slow-client defence)."""
    body_timeout_s: float = 30.0
    """A request's body must arrive within this time after its headers; else 408."""
    max_connections: int = 1000
    """Open connections one gateway process holds at most; past it new requests get 503."""
    request_timeout_s: float = 60.0
    """Deadline of a request from arrival; past it the gateway answers 504 and workers skip the job."""
    max_queue: int = 10_000
    """Most jobs waiting or in flight; past it the gateway answers 503 with Retry-After."""
    batch_max_items: int = 64
    """Most items a worker runs in one batch."""
    batch_max_wait_ms: float = 0.0
    """How long a worker waits for more jobs to fill a batch once it has one. 0: run what is there
    (CPU judges gain little from waiting; GPU model workers do)."""
    visibility_timeout_s: float = 30.0
    """A claimed job whose worker stops heart-beating for this long is reclaimed by another worker."""
    max_attempts: int = 3
    """Deliveries of one job before it is answered with an error and dead-lettered."""
    result_ttl_s: float = 600.0
    """How long results (and request-id markers) stay in Redis."""
    retry_after_s: float = 1.0
    """Retry-After sent with 503 answers."""
    queue: str = ""
    """Queue name override (default: the service name); lets several deployments share one Redis."""

    def __post_init__(self) -> None:
        positive = ("max_body_bytes", "max_items", "request_timeout_s", "max_queue", "batch_max_items",
                    "visibility_timeout_s", "max_attempts", "result_ttl_s", "header_timeout_s", "body_timeout_s",
                    "max_connections")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"CGPO_{name.upper()} must be > 0, got {getattr(self, name)!r}")
        if self.batch_max_wait_ms < 0:
            raise ValueError("CGPO_BATCH_MAX_WAIT_MS must be >= 0")
        bad = [p for p in self.public_paths if not p.startswith("/")]
        if bad:
            raise ValueError(f"CGPO_PUBLIC_PATHS must be paths starting with '/', got {bad}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServiceSettings:
        """Settings from ``CGPO_*`` in ``env`` (default ``os.environ``); keyword overrides win."""
        return load_env(cls, "CGPO_", env, **overrides)


T = TypeVar("T")


def load_env(cls: type[T], prefix: str, env: Mapping[str, str] | None = None, **overrides: object) -> T:
    """Build dataclass ``cls`` from ``{prefix}{FIELD}`` variables; empty values count as unset.

    Field types drive parsing: ``int``, ``float``, ``tuple[str, ...]`` (comma-separated), else the string.
    """
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        var = prefix + f.name.upper()
        raw = env.get(var)
        if raw not in (None, ""):
            values[f.name] = _parse(var, raw, str(f.type))
    values.update(overrides)
    return cls(**values)


def _parse(var: str, raw: str, type_name: str) -> object:
    try:
        if type_name.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{var}={raw!r} is not a valid {type_name}") from exc
    return raw
