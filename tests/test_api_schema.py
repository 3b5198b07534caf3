"""Both services against their own OpenAPI schema, fuzzed by schemathesis.

Each deployment — judges and reward models, embedded and over Redis with a
worker — is served as deployed (uvicorn, the gateway's limits) and every
operation in its schema gets generated requests, valid and invalid. The checks:
no server error, every status answered is one the schema lists for that route,
every body and header matches the schema, invalid requests are refused, 405s
name the allowed methods. Left out: schemathesis' "valid data is accepted",
because some rules cannot be written in a JSON schema and are answered 400/422
by design — a lone UTF-16 surrogate in a string, ``prompts`` as long as
``query`` (OpenRLHF's request).
"""
# ruff: noqa: E402  (imports after the importorskip)

from __future__ import annotations

import contextlib

import pytest

# Not installed in the vLLM environment, which collects every module but runs only -m vllm.
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode

from cgpo.services.common.settings import ServiceSettings
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.rm.config import RMConfig
from tests.procs import answers_200, app_server, wait_until, worker_thread
from tests.rm.conftest import tiny_rm

JUDGES = JudgeConfig(enabled=("math", "code", "instructions", "refusal"), processes=1)
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def judges_service(redis_url: str | None):
    from cgpo.services.judges.app import SERVICE, build_app
    from cgpo.services.judges.handler import JudgeHandler
    from cgpo.services.judges.registry import build

    service_settings = ServiceSettings(redis_url=redis_url, request_timeout_s=20)
    with contextlib.ExitStack() as stack:
        if redis_url:
            handler = JudgeHandler(build(JUDGES))
            stack.callback(handler.close)
            stack.enter_context(worker_thread(handler, service_settings, SERVICE))
        yield stack.enter_context(app_server(build_app(service_settings, JUDGES)))


@contextlib.contextmanager
def rm_service(redis_url: str | None, rm_path):
    from cgpo.services.rm.app import SERVICE, build_app, make_cache
    from cgpo.services.rm.handler import RMHandler

    service_settings = ServiceSettings(redis_url=redis_url, request_timeout_s=20)
    config = RMConfig(models=(f"helpful={rm_path}",))
    with contextlib.ExitStack() as stack:
        if redis_url:
            handler = RMHandler.from_config(config, make_cache(service_settings, config))
            stack.callback(handler.close)
            stack.enter_context(worker_thread(handler, service_settings, SERVICE))
        yield stack.enter_context(app_server(build_app(service_settings, config)))


@pytest.fixture(scope="module")
def rm_model(tmp_path_factory):
    return tiny_rm(tmp_path_factory.mktemp("schema-rm"))


def fuzz(url: str) -> list[str]:
    """Every operation of the schema at ``url``: valid and invalid generated requests, every check."""
    wait_until(lambda: answers_200(f"{url}/readyz"), 60, "the service to be ready")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        has_inputs = len(operation.body) + len(operation.query) + len(operation.path_parameters) > 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,):

            @given(case=operation.as_strategy(generation_mode=mode))
            @EXAMPLES
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            check()
    return [operation.label for operation in operations]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_judges_service_keeps_its_contract(mode, redis_server):
    with judges_service(redis_server.url if mode == "queue" else None) as url:
        operations = fuzz(url)
    assert {"POST /v1/judge", "GET /v1/judges", "GET /healthz", "GET /readyz", "GET /metrics"} <= set(operations)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_reward_model_service_keeps_its_contract(mode, redis_server, rm_model):
    with rm_service(redis_server.url if mode == "queue" else None, rm_model) as url:
        operations = fuzz(url)
    assert {"POST /v1/score", "GET /v1/models", "POST /get_reward"} <= set(operations)
