"""Typed service errors, each with its HTTP status and stable code.

The gateway maps every one of them to the single error envelope
(`schemas.ErrorEnvelope`); the client maps the envelope back to these types.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, detail: Any = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.retry_after_s = retry_after_s


class BadRequestError(ServiceError):
    status, code = 400, "bad_request"


class UnknownJudgeError(BadRequestError):
    code = "unknown_judge"


class UnknownModelError(ServiceError):
    status, code = 404, "unknown_model"


class AuthError(ServiceError):
    status, code = 401, "unauthorized"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class ValidationError(ServiceError):
    status, code = 422, "invalid_request"


class ConflictError(ServiceError):
    """A request id reused with a different body: the id names another request."""

    status, code = 409, "request_id_conflict"

    def __init__(self, message: str = "this X-Request-ID was already used for a different request body; "
                                      "send a new id for a new request", detail: Any = None) -> None:
        super().__init__(message, detail)


class RateLimitedError(ServiceError):
    status, code = 429, "rate_limited"


class QueueFullError(ServiceError):
    status, code = 503, "queue_full"


class ServiceUnavailableError(ServiceError):
    status, code = 503, "unavailable"


class DeadlineExceededError(ServiceError):
    status, code = 504, "deadline_exceeded"


class JobFailedError(ServiceError):
    """The worker could not produce outputs (handler crash, attempts exhausted)."""

    status, code = 500, "job_failed"


def _subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


_BY_CODE: dict[str, type[ServiceError]] = {cls.code: cls for cls in _subclasses(ServiceError)}


def error_for(status: int, code: str, message: str, detail: Any = None) -> ServiceError:
    """The typed error for an envelope received over HTTP."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = {401: AuthError, 409: ConflictError, 413: PayloadTooLargeError, 422: ValidationError, 429: RateLimitedError,
               503: ServiceUnavailableError, 504: DeadlineExceededError}.get(status, ServiceError)
    err = cls(message, detail)
    err.status = status
    return err
