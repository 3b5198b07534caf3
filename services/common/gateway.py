"""The gateway app factory: what every service's HTTP front shares.

`create_app` returns a FastAPI app with ``/healthz``, ``/readyz`` and
Prometheus ``/metrics``; bearer-token auth when API keys are configured (every
path but ``public_paths``, the probes by default); a body-size limit and a
body-read deadline; one JSON error envelope for every failure (never a 500 for
bad input); and the backend (Redis queue or in-process handler) started and
closed with the app. Services add their routes with `submit`, which assigns the
request id — scoped by the caller's key and bound to the request's items —
applies the deadline and item limits, and maps backend errors.

Metrics are labelled by route template, never by the raw path: any number of
distinct unknown paths is one series (``unmatched``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from cgpo.services.common.backends import GatewayBackend
from cgpo.services.common.errors import (
    AuthError,
    BadRequestError,
    PayloadTooLargeError,
    ServiceError,
    ServiceUnavailableError,
    ValidationError,
    http_error,
)
from cgpo.services.common.schemas import ErrorBody, ErrorEnvelope, Health, scrub_text
from cgpo.services.common.settings import ServiceSettings

REQUEST_ID_HEADER = "X-Request-ID"
TIMEOUT_HEADER = "X-Timeout-S"
UNMATCHED = "unmatched"  # the metrics label of every path no route serves
# Every status a route of ours can answer besides its 200 (documented in the OpenAPI schema).
ERROR_STATUSES = (400, 401, 404, 408, 409, 413, 422, 500, 503, 504)


class Metrics:
    """Prometheus metrics of one app (its own registry, so apps do not share counters)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cgpo_requests", "HTTP requests", ["service", "path", "status"],
                                registry=self.registry)
        self.latency = Histogram("cgpo_request_seconds", "HTTP request latency", ["service", "path"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
        self.items = Counter("cgpo_items", "Items accepted", ["service"], registry=self.registry)
        self.queue_depth = Gauge("cgpo_queue_depth", "Jobs waiting or in flight", ["service"],
                                 registry=self.registry)
        self.late_results = Gauge("cgpo_late_results", "Duplicate results discarded because the job was "
                                  "already answered (workers resumed after their job was reclaimed)", ["service"],
                                  registry=self.registry)
        self.service = service


def error_response(err: ServiceError, default_retry_after_s: float | None = None) -> JSONResponse:
    """The envelope of ``err``. A 503 that names no Retry-After of its own gets ``default_retry_after_s``."""
    body = ErrorEnvelope(error=ErrorBody.of(err))
    retry_after_s = err.retry_after_s
    if retry_after_s is None and err.status == 503:
        retry_after_s = default_retry_after_s
    headers = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s else None
    # scrub: an error may quote the caller's text, and that text may not be encodable
    return JSONResponse(scrub_text(body.model_dump(mode="json")), status_code=err.status, headers=headers)


def create_app(service: str, backend: GatewayBackend, settings: ServiceSettings, *, title: str,
               description: str, version: str = "0.1.0") -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await backend.start()
        yield
        await backend.close()

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan,
                  responses={code: {"model": ErrorEnvelope} for code in ERROR_STATUSES})
    app.state.backend = backend
    app.state.settings = settings
    app.state.metrics = metrics = Metrics(service)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, settings.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        if any(e["type"] == "lone_surrogate" for e in errors):  # say where, not every other error it caused
            errors = [e for e in errors if e["type"] == "lone_surrogate"]
        return error_response(ValidationError("the request body does not match the schema", errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(http_error(exc.status_code, str(exc.detail)))
        response.headers.update(exc.headers or {})  # e.g. 405's Allow
        return response

    def known_paths() -> set[str]:
        return set(app.openapi()["paths"]) | {p for p in (app.docs_url, app.redoc_url, app.openapi_url) if p}

    app.add_middleware(Guard, service=service, settings=settings, metrics=metrics, known_paths=known_paths)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok", mode=backend.mode)  # type: ignore[arg-type]

    @app.get("/readyz", response_model=Health, tags=["ops"], responses={503: {"model": ErrorEnvelope}})
    async def readyz() -> Any:
        """Readiness: the backend can take work (Redis reachable and at least one live worker)."""
        detail = await backend.health()
        metrics.queue_depth.labels(service).set(detail.get("queue_depth", 0))
        if backend.mode == "queue" and detail.get("workers", 0) == 0:
            raise ServiceUnavailableError("no live worker is serving the queue", detail)
        return Health(status="ok", mode=backend.mode, detail=detail)  # type: ignore[arg-type]

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        with contextlib.suppress(ServiceError):  # the queue's figures are best effort: Redis may be down
            detail = await backend.health()
            metrics.queue_depth.labels(service).set(detail.get("queue_depth", 0))
            metrics.late_results.labels(service).set(detail.get("late_results", 0))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class Guard:
    """ASGI middleware: bearer auth, body-size limit, body-read deadline and request metrics,
    before any route runs. The key a request came with names its tenant (``scope["state"]``)."""

    def __init__(self, app: Any, *, service: str, settings: ServiceSettings, metrics: Metrics,
                 known_paths: Any) -> None:
        self.app, self.service, self.settings, self.metrics = app, service, settings, metrics
        self.known_paths = known_paths
        self._known: set[str] | None = None
        self.public = set(settings.public_paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            rejection = self._check_auth(scope, headers) or self._check_length(headers)
            if rejection is not None:
                await rejection(scope, receive, send_and_record)
            else:
                await self.app(scope, self._limited(receive), send_and_record)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(self.service, route, str(status)).inc()
            self.metrics.latency.labels(self.service, route).observe(time.perf_counter() - start)

    def _route(self, scope: dict[str, Any]) -> str:
        """A bounded label for ``scope``: the template of the route that served it, else (a request
        refused before routing) its path when a route has that path, else ``unmatched``."""
        route = scope.get("route")
        if route is not None and isinstance(getattr(route, "path", None), str):
            return route.path
        if self._known is None:
            self._known = self.known_paths()
        return scope["path"] if scope["path"] in self._known else UNMATCHED

    def _check_auth(self, scope: dict[str, Any], headers: dict[str, str]) -> Response | None:
        scope.setdefault("state", {})["tenant"] = "public"
        if not self.settings.api_keys:
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        matched = scheme.lower() == "bearer" and any(
            hmac.compare_digest(token.encode("latin-1"), k.encode()) for k in self.settings.api_keys)
        if matched:
            # the tenant is named by a hash of its key: ids and logs never carry the key itself
            scope["state"]["tenant"] = hashlib.sha256(token.encode("latin-1")).hexdigest()[:16]
            return None
        if scope["path"] in self.public:
            return None
        response = error_response(AuthError("a valid bearer token is required (Authorization: Bearer <key>)"))
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def _check_length(self, headers: dict[str, str]) -> Response | None:
        declared = headers.get("content-length")
        if declared is None:
            return None
        if not declared.isdigit():
            return error_response(BadRequestError("invalid Content-Length header"))
        if int(declared) > self.settings.max_body_bytes:
            return error_response(self._too_large())
        return None

    def _limited(self, receive: Any) -> Any:
        """``receive`` that fails with 413 once the body passes the size limit, and with 408 when the
        whole body has not arrived ``body_timeout_s`` after the headers (a stalled upload)."""
        size = 0
        deadline = time.monotonic() + self.settings.body_timeout_s

        async def limited() -> dict[str, Any]:
            nonlocal size
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                # an HTTPException passes FastAPI's body reader untouched (others become 400)
                raise HTTPException(408, f"the request body did not arrive within "
                                         f"{self.settings.body_timeout_s:g}s") from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.settings.max_body_bytes:
                    raise HTTPException(413, self._too_large().message)
            return message

        return limited

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"request body exceeds {self.settings.max_body_bytes} bytes",
                                    {"max_body_bytes": self.settings.max_body_bytes})


def document_choices(app: FastAPI, schema: str, field: str, choices: list[str], *, array: bool = False) -> None:
    """Say in the app's OpenAPI schema which values ``schema.field`` accepts (the judges or models this
    deployment serves), so that what the schema allows is what the service accepts."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            prop = base()["components"]["schemas"][schema]["properties"][field]
            (prop["items"] if array else prop)["enum"] = choices
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


async def submit(request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``items`` through the app's backend under the request's id and deadline."""
    settings: ServiceSettings = request.app.state.settings
    if len(items) > settings.max_items:
        raise PayloadTooLargeError(f"{len(items)} items exceed the limit of {settings.max_items} per request",
                                   {"max_items": settings.max_items})
    request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
    if len(request_id) > 128:
        raise BadRequestError(f"{REQUEST_ID_HEADER} is longer than 128 characters")
    # Scoped by tenant: one caller's id never reaches another caller's result.
    job_id = f"{request.state.tenant}:{request_id}"
    timeout_s = settings.request_timeout_s
    if TIMEOUT_HEADER.lower() in request.headers:
        try:
            timeout_s = min(timeout_s, float(request.headers[TIMEOUT_HEADER]))
        except ValueError as exc:
            raise BadRequestError(f"{TIMEOUT_HEADER} must be a number of seconds") from exc
        if timeout_s <= 0:
            raise BadRequestError(f"{TIMEOUT_HEADER} must be > 0")
    request.app.state.metrics.items.labels(request.app.state.metrics.service).inc(len(items))
    return await request.app.state.backend.run(job_id, items, timeout_s)
