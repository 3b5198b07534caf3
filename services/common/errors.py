"""Typed service errors, each with its HTTP status and stable code.

These classes are the one error vocabulary of the services: the gateway maps
every one of them to the single error envelope (`schemas.ErrorEnvelope`),
workers store them as a job's error (`schemas.ErrorBody.of`), and the client and
the gateway map a received code back to its class (`error_for`, `ServiceError.matches`).
No code is spelt out anywhere else.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, detail: Any = None, *, retry_after_s: float | None = None,
                 status: int | None = None) -> None:
        """``status`` overrides the class's for this error: an answer received with another status
        keeps the status it came with."""
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.retry_after_s = retry_after_s
        if status is not None:
            self.status = status

    @classmethod
    def matches(cls, code: str) -> bool:
        """Whether an error received as ``code`` (a job's stored error, an envelope) is one of this class."""
        return issubclass(_BY_CODE.get(code, ServiceError), cls)


class BadRequestError(ServiceError):
    status, code = 400, "bad_request"


class UnknownJudgeError(BadRequestError):
    code = "unknown_judge"


class NotFoundError(ServiceError):
    """A path no route serves."""

    status, code = 404, "not_found"


class UnknownModelError(ServiceError):
    status, code = 404, "unknown_model"


class MethodNotAllowedError(ServiceError):
    status, code = 405, "method_not_allowed"


class RequestTimeoutError(ServiceError):
    """The request (its headers or its body) did not arrive in time."""

    status, code = 408, "request_timeout"


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
                                      "send a new id for a new request", detail: Any = None, **kwargs: Any) -> None:
        super().__init__(message, detail, **kwargs)


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


class HTTPError(ServiceError):
    """An HTTP failure with no more specific class: its status is the one it came with."""

    code = "http_error"


def _subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


# HTTPError's code names no failure in particular: an answer carrying it is typed by its status.
_BY_CODE: dict[str, type[ServiceError]] = {cls.code: cls for cls in _subclasses(ServiceError) if cls is not HTTPError}


def error_for(status: int, code: str, message: str, detail: Any = None) -> ServiceError:
    """The typed error for an envelope received over HTTP."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = {401: AuthError, 409: ConflictError, 413: PayloadTooLargeError, 422: ValidationError,
               429: RateLimitedError, 503: ServiceUnavailableError,
               504: DeadlineExceededError}.get(status, ServiceError)
    return cls(message, detail, status=status)


def error_of(code: str, message: str, detail: Any = None) -> ServiceError:
    """The typed error a stored error body names (a job's, an item's); a code no class has is the job's failure."""
    return _BY_CODE.get(code, JobFailedError)(message, detail)


def http_error(status: int, message: str) -> ServiceError:
    """The typed error for an HTTP status raised before any route ran (no route, wrong method, slow body)."""
    cls = {404: NotFoundError, 405: MethodNotAllowedError, 408: RequestTimeoutError,
           413: PayloadTooLargeError}.get(status, HTTPError)
    return cls(message, status=status)
