"""Async HTTP clients of the services, and their in-process (embedded) form.

`ServiceClient` sends one schema-typed request with a request id that stays
the same across its retries (so the service runs it once), retries only what
is safe to retry — connection errors, timeouts, 429 and 503 — with bounded
exponential backoff (honouring Retry-After), and turns error envelopes into the
typed exceptions of `cgpo.services.common.errors`.

A client made with `ServiceClient.for_app` talks to a gateway app in this process
through httpx's ASGI transport: same validation, same answers, nothing to start.
Each service builds its own app for that (`cgpo.services.judges.embedded`,
`cgpo.services.rm.embedded`): this module knows the services only by their routes
and schemas.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from cgpo.services.common.errors import (
    DeadlineExceededError,
    HTTPError,
    ServiceError,
    ServiceUnavailableError,
    error_for,
)
from cgpo.services.common.schemas import (
    JudgeItem,
    JudgeList,
    JudgeRequest,
    JudgeResponse,
    JudgeResult,
    ModelList,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
)

R = TypeVar("R", bound=BaseModel)
C = TypeVar("C", bound="ServiceClient")
RETRY_STATUS = {429, 503}


class ServiceClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 5, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None, app: Any = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._app = app  # the embedded app whose backend this client starts and closes
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, transport=transport,
                                      timeout=httpx.Timeout(timeout_s, connect=5.0),
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    @classmethod
    def for_app(cls: type[C], app: Any, **kwargs: Any) -> C:
        """A client of the gateway ``app`` in this process; entering it starts the app's backend and
        closing it closes the backend."""
        return cls("http://embedded", transport=httpx.ASGITransport(app=app), app=app, **kwargs)

    async def __aenter__(self: Any) -> Any:
        if self._app is not None:
            await self._app.state.backend.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()
        if self._app is not None:
            await self._app.state.backend.close()
            self._app = None

    async def request(self, method: str, path: str, response_type: type[R], body: BaseModel | None = None,
                      *, request_id: str | None = None, timeout_s: float | None = None) -> R:
        """One call, retried while safe; returns the parsed body or raises a typed ServiceError."""
        headers = {"X-Request-ID": request_id or uuid.uuid4().hex}
        if timeout_s is not None:
            headers["X-Timeout-S"] = str(timeout_s)
        content = body.model_dump_json() if body is not None else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self.http.request(method, path, content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if last:
                    raise ServiceUnavailableError(f"cannot reach {self.http.base_url}: {exc}") from exc
                await self._sleep(attempt, None)
                continue
            except httpx.TimeoutException as exc:
                if last:
                    raise DeadlineExceededError(f"{method} {path} timed out after {self.timeout_s}s") from exc
                await self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUS and not last:
                await self._sleep(attempt, response.headers.get("Retry-After"))
                continue
            if response.is_success:
                return response_type.model_validate_json(response.content)
            raise _error_from(response)
        raise AssertionError("unreachable")

    async def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        if retry_after is not None:
            try:
                delay = min(max(delay, float(retry_after)), self.max_backoff_s)
            except ValueError:
                pass
        await asyncio.sleep(delay)


def _error_from(response: httpx.Response) -> ServiceError:
    try:
        error = response.json()["error"]
        return error_for(response.status_code, error["code"], error["message"], error.get("detail"))
    except (ValueError, KeyError, TypeError):
        return error_for(response.status_code, HTTPError.code, response.text[:500] or response.reason_phrase)


class JudgesClient(ServiceClient):
    """Client of the judges service (`POST /v1/judge`, `GET /v1/judges`)."""

    async def judge(self, items: Sequence[JudgeItem | dict[str, Any]], *, request_id: str | None = None,
                    timeout_s: float | None = None) -> list[JudgeResult]:
        body = JudgeRequest(items=[JudgeItem.model_validate(i) for i in items])
        response = await self.request("POST", "/v1/judge", JudgeResponse, body, request_id=request_id,
                                      timeout_s=timeout_s)
        return response.results

    async def judges(self) -> JudgeList:
        return await self.request("GET", "/v1/judges", JudgeList)


class RewardClient(ServiceClient):
    """Client of the reward-model service (`POST /v1/score`, `GET /v1/models`)."""

    async def score(self, model: str, items: Sequence[ScoreItem | dict[str, Any]], *,
                    request_id: str | None = None, timeout_s: float | None = None) -> list[ScoreResult]:
        body = ScoreRequest(model=model, items=[ScoreItem.model_validate(i) for i in items])
        response = await self.request("POST", "/v1/score", ScoreResponse, body, request_id=request_id,
                                      timeout_s=timeout_s)
        return response.results

    async def models(self) -> ModelList:
        return await self.request("GET", "/v1/models", ModelList)

