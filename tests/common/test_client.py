import asyncio

import httpx
import pytest

from cgpo.services.common.client import JudgesClient
from cgpo.services.common.errors import (
    AuthError,
    DeadlineExceededError,
    ServiceUnavailableError,
    UnknownJudgeError,
    ValidationError,
)
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.embedded import embedded_judges

ITEM = {"prompt": "p", "response": "Sure, here it is.", "judges": ["refusal"]}
OK = {"results": [{"feasible": True, "verdicts": {"refusal": {"verdict": "pass", "detail": {}}}}]}


def envelope(code: str, message: str = "m", detail=None) -> dict:
    return {"error": {"code": code, "message": message, "detail": detail}}


def scripted(*responses):
    """A transport answering the scripted responses in turn and recording each request."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        nxt = queue.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    return httpx.MockTransport(handle), seen


def client(transport, **kwargs) -> JudgesClient:
    return JudgesClient("http://svc", transport=transport, backoff_s=0.001, **kwargs)


def test_retries_503_and_connect_errors_with_the_same_request_id():
    transport, seen = scripted(httpx.Response(503, json=envelope("queue_full"), headers={"Retry-After": "0"}),
                               httpx.ConnectError("refused"), httpx.Response(200, json=OK))
    results = asyncio.run(client(transport).judge([ITEM]))
    assert results[0].feasible is True
    assert len(seen) == 3
    assert len({r.headers["X-Request-ID"] for r in seen}) == 1


def test_does_not_retry_client_errors_and_raises_typed_exceptions():
    cases = [(400, "unknown_judge", UnknownJudgeError), (401, "unauthorized", AuthError),
             (422, "invalid_request", ValidationError), (504, "deadline_exceeded", DeadlineExceededError)]
    for status, code, exc_type in cases:
        transport, seen = scripted(httpx.Response(status, json=envelope(code, detail={"known": ["x"]})))
        with pytest.raises(exc_type) as info:
            asyncio.run(client(transport).judge([ITEM]))
        assert len(seen) == 1 and info.value.status == status


def test_gives_up_after_bounded_retries():
    transport, seen = scripted(*[httpx.ConnectError("refused")] * 3)
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(client(transport, max_retries=2).judge([ITEM]))
    assert len(seen) == 3


def test_non_envelope_errors_still_map_by_status():
    transport, _ = scripted(httpx.Response(503, text="upstream down"))
    with pytest.raises(ServiceUnavailableError) as info:
        asyncio.run(client(transport, max_retries=0).judge([ITEM]))
    assert "upstream down" in info.value.message


def test_embedded_client_judges_in_process():
    async def scenario():
        async with embedded_judges(JudgeConfig(enabled=("refusal",))) as judges:
            listed = await judges.judges()
            results = await judges.judge([ITEM, {**ITEM, "response": "I'm sorry, I can't do that."}])
            with pytest.raises(UnknownJudgeError):
                await judges.judge([{**ITEM, "judges": ["nope"]}])
            return listed, results

    listed, results = asyncio.run(scenario())
    assert [j.name for j in listed.judges] == ["refusal"]
    assert [r.feasible for r in results] == [True, False]


def test_callers_that_know_only_the_clients_get_embedded_judges_by_name():
    from cgpo import embedded

    async def scenario():
        async with embedded.judges(["refusal"]) as judges:
            return await judges.judges(), await judges.judge([ITEM])

    listed, [result] = asyncio.run(scenario())
    assert [j.name for j in listed.judges] == ["refusal"] and result.feasible
