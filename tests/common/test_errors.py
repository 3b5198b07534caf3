"""One error vocabulary: codes are written and read only through the classes of services/common/errors.py."""

from __future__ import annotations

import pytest

from cgpo.services.common.backends import QueueBackend, outputs_of
from cgpo.services.common.errors import (
    DeadlineExceededError,
    HTTPError,
    JobFailedError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceError,
    ServiceUnavailableError,
    UnknownJudgeError,
    UnknownModelError,
    error_for,
    error_of,
    http_error,
)
from cgpo.services.common.gateway import error_response
from cgpo.services.common.schemas import ErrorEnvelope, JobResult, ScoreResult
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import expired_result


def test_a_code_matches_its_class_and_the_classes_above_it():
    assert UnknownJudgeError.matches("unknown_judge") and ServiceError.matches("unknown_judge")
    assert not JobFailedError.matches("unknown_judge") and not UnknownJudgeError.matches("bad_request")
    assert ServiceError.matches("no such code") and not JobFailedError.matches("no such code")


def test_a_stored_error_is_written_from_its_class_and_read_back_as_it():
    expired = expired_result("j")
    assert expired.error is not None and DeadlineExceededError.matches(expired.error.code)
    with pytest.raises(DeadlineExceededError):
        outputs_of(expired)
    with pytest.raises(JobFailedError, match="boom"):
        outputs_of(JobResult.failed("j", JobFailedError("boom")))
    item = ScoreResult.unscored(UnknownModelError("no such model", {"unknown": "m"}))
    assert isinstance(error_of(item.error.code, item.error.message, item.error.detail), UnknownModelError)
    assert type(error_of("never heard of it", "m")) is JobFailedError


@pytest.mark.parametrize("status, cls, code", [
    (404, NotFoundError, "not_found"), (405, MethodNotAllowedError, "method_not_allowed"),
    (408, RequestTimeoutError, "request_timeout"), (413, PayloadTooLargeError, "payload_too_large"),
    (418, HTTPError, "http_error"),
])
def test_http_statuses_raised_before_any_route_are_typed_errors(status, cls, code):
    err = http_error(status, "m")
    assert type(err) is cls and err.code == code and err.status == status


def test_a_received_status_is_kept_and_the_generic_code_is_typed_by_its_status():
    assert error_for(502, "unknown_judge", "m").status == 502
    assert type(error_for(503, HTTPError.code, "m")) is ServiceUnavailableError
    assert type(error_for(418, HTTPError.code, "m")) is ServiceError


def test_a_503_without_its_own_retry_after_gets_the_default_and_the_error_is_left_as_it_was():
    err = ServiceUnavailableError("down")
    response = error_response(err, default_retry_after_s=3)
    assert response.headers["Retry-After"] == "3" and err.retry_after_s is None
    assert error_response(ServiceUnavailableError("down", retry_after_s=7), 3).headers["Retry-After"] == "7"
    assert "Retry-After" not in error_response(JobFailedError("x"), 3).headers
    assert ErrorEnvelope.model_validate_json(response.body).error.code == ServiceUnavailableError.code


def test_a_queue_backend_without_redis_is_a_configuration_error():
    with pytest.raises(ValueError, match="CGPO_REDIS_URL"):
        QueueBackend(ServiceSettings(), "judges")
