"""The judges REST gateway, in-process (ASGI), embedded and over a real Redis queue."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import pytest

from cgpo.services.common.schemas import ErrorEnvelope, Health, JudgeResponse
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.judges.app import SERVICE, build_app
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.handler import JudgeHandler
from cgpo.services.judges.registry import build
from tests.conftest import RedisServer
from tests.procs import worker_thread

CONFIG = JudgeConfig(enabled=("refusal",))
REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure: preheat the oven to 180C and bake for 25 minutes."


def item(response: str, **metadata) -> dict:
    return {"prompt": "How do I bake bread?", "response": response, "judges": ["refusal"], "metadata": metadata}


@contextlib.asynccontextmanager
async def serve(settings: ServiceSettings, config: JudgeConfig = CONFIG):
    app = build_app(settings, config)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


def judge_worker(settings: ServiceSettings, config: JudgeConfig = CONFIG):
    return worker_thread(JudgeHandler(build(config)), settings, SERVICE)


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------ embedded


def test_judge_answers_one_result_per_item_in_order():
    async def scenario():
        async with serve(ServiceSettings()) as client:
            r = await client.post("/v1/judge", json={"items": [
                item(REFUSE), item(COMPLY), item(COMPLY, mode="must_refuse"), item(REFUSE, mode="must_refuse")]})
            return r

    r = run(scenario())
    assert r.status_code == 200
    results = JudgeResponse.model_validate(r.json()).results
    assert [x.feasible for x in results] == [False, True, False, True]
    assert [x.verdicts["refusal"].verdict for x in results] == ["fail", "pass", "fail", "pass"]
    assert results[0].verdicts["refusal"].detail["refused"] is True


def test_list_judges_names_their_metadata():
    async def scenario():
        async with serve(ServiceSettings()) as client:
            return (await client.get("/v1/judges")).json()

    body = run(scenario())
    assert [j["name"] for j in body["judges"]] == ["refusal"]
    assert "mode" in body["judges"][0]["metadata"]


@pytest.mark.parametrize("body, status, code", [
    ({"items": [{**item(COMPLY), "judges": ["nope"]}]}, 400, "unknown_judge"),
    ({"items": []}, 422, "invalid_request"),
    ({"items": [{"prompt": "p", "judges": ["refusal"]}]}, 422, "invalid_request"),
    ({"items": [{**item(COMPLY), "surprise": 1}]}, 422, "invalid_request"),
    ({"items": [{**item(COMPLY), "judges": []}]}, 422, "invalid_request"),
    ({"items": [{**item(COMPLY), "metadata": "not an object"}]}, 422, "invalid_request"),
    ("not json at all", 422, "invalid_request"),
])
def test_bad_input_gets_a_4xx_envelope(body, status, code):
    async def scenario():
        async with serve(ServiceSettings()) as client:
            if isinstance(body, str):
                return await client.post("/v1/judge", content=body, headers={"Content-Type": "application/json"})
            return await client.post("/v1/judge", json=body)

    r = run(scenario())
    assert r.status_code == status
    error = ErrorEnvelope.model_validate(r.json()).error
    assert error.code == code and error.message
    if code == "unknown_judge":
        assert error.detail["known"] == ["refusal"] and "refusal" in error.message


def test_too_large_requests_get_413():
    async def scenario():
        async with serve(ServiceSettings(max_body_bytes=2000, max_items=3)) as client:
            big = await client.post("/v1/judge", json={"items": [item("x" * 5000)]})
            many = await client.post("/v1/judge", json={"items": [item(COMPLY)] * 4})

            async def chunks():  # no Content-Length: the limit applies while reading
                for _ in range(10):
                    yield b" " * 500
            streamed = await client.post("/v1/judge", content=chunks(), headers={"Content-Type": "application/json"})
            return big, many, streamed

    big, many, streamed = run(scenario())
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    assert many.status_code == 413 and many.json()["error"]["detail"]["max_items"] == 3
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"


def test_auth_when_api_keys_are_set():
    async def scenario():
        async with serve(ServiceSettings(api_keys=("k1", "k2"))) as client:
            body = {"items": [item(COMPLY)]}
            return (await client.post("/v1/judge", json=body),
                    await client.post("/v1/judge", json=body, headers={"Authorization": "Bearer wrong"}),
                    await client.post("/v1/judge", json=body, headers={"Authorization": "Bearer k2"}),
                    await client.get("/healthz"))

    missing, wrong, good, health = run(scenario())
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert good.status_code == 200
    assert health.status_code == 200  # probes stay open


def test_auth_off_by_default_and_metrics_count_requests():
    async def scenario():
        async with serve(ServiceSettings()) as client:
            await client.post("/v1/judge", json={"items": [item(COMPLY)]})
            await client.post("/v1/judge", json={"items": []})
            return (await client.get("/metrics")).text

    text = run(scenario())
    assert 'cgpo_requests_total{path="/v1/judge",service="judges",status="200"} 1.0' in text
    assert 'cgpo_requests_total{path="/v1/judge",service="judges",status="422"} 1.0' in text
    assert 'cgpo_items_total{service="judges"} 1.0' in text
    assert 'cgpo_judge_verdicts_total{judge="refusal",verdict="pass"} 1.0' in text


def test_openapi_documents_the_contract():
    async def scenario():
        async with serve(ServiceSettings()) as client:
            return (await client.get("/openapi.json")).json()

    spec = run(scenario())
    assert "/v1/judge" in spec["paths"] and "/v1/judges" in spec["paths"]
    assert {"JudgeRequest", "JudgeResponse", "Verdict", "ErrorEnvelope"} <= set(spec["components"]["schemas"])


# ------------------------------------------------------------------ over Redis


def test_queue_mode_judges_through_workers(redis_url):
    settings = ServiceSettings(redis_url=redis_url)

    async def scenario():
        async with serve(settings) as client:
            not_ready = await client.get("/readyz")
            with judge_worker(settings):
                await asyncio.sleep(0.3)
                ready = await client.get("/readyz")
                r = await client.post("/v1/judge", json={"items": [item(REFUSE), item(COMPLY)]})
            return not_ready, ready, r

    not_ready, ready, r = run(scenario())
    assert not_ready.status_code == 503 and "worker" in ErrorEnvelope.model_validate(not_ready.json()).error.message
    assert ready.status_code == 200 and Health.model_validate(ready.json()).detail["workers"] >= 1
    assert [x.feasible for x in JudgeResponse.model_validate(r.json()).results] == [False, True]


def test_duplicate_request_id_is_judged_once(redis_url):
    settings = ServiceSettings(redis_url=redis_url)
    rid = uuid.uuid4().hex

    async def scenario():
        async with serve(settings) as client:
            with judge_worker(settings) as worker:
                body = {"items": [item(REFUSE)]}
                headers = {"X-Request-ID": rid}
                first, second = await asyncio.gather(client.post("/v1/judge", json=body, headers=headers),
                                                     client.post("/v1/judge", json=body, headers=headers))
                third = await client.post("/v1/judge", json=body, headers=headers)
                return [first, second, third], worker.jobs_done

    responses, jobs_done = run(scenario())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.text for r in responses}) == 1
    assert jobs_done == 1


def test_no_worker_means_504_at_the_deadline(redis_url):
    async def scenario():
        async with serve(ServiceSettings(redis_url=redis_url)) as client:
            return await client.post("/v1/judge", json={"items": [item(COMPLY)]}, headers={"X-Timeout-S": "0.3"})

    r = run(scenario())
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_full_queue_means_503_with_retry_after(redis_url):
    async def scenario():
        async with serve(ServiceSettings(redis_url=redis_url, max_queue=1, retry_after_s=2)) as client:
            slow = asyncio.create_task(client.post("/v1/judge", json={"items": [item(COMPLY)]},
                                                   headers={"X-Timeout-S": "1"}))
            await asyncio.sleep(0.2)
            full = await client.post("/v1/judge", json={"items": [item(COMPLY)]})
            await slow
            return full

    full = run(scenario())
    assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
    assert full.headers["Retry-After"] == "2"


def test_redis_down_is_a_clear_503_and_the_service_recovers():
    server = RedisServer().start()
    settings = ServiceSettings(redis_url=server.url, request_timeout_s=5)

    async def scenario():
        async with serve(settings) as client:
            with judge_worker(settings):
                body = {"items": [item(COMPLY)]}
                before = await client.post("/v1/judge", json=body)
                server.stop()
                down = await client.post("/v1/judge", json=body)
                ready_down = await client.get("/readyz")
                server.start()
                after = None
                for _ in range(50):  # the worker reconnects with backoff
                    after = await client.post("/v1/judge", json=body, headers={"X-Timeout-S": "2"})
                    if after.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                return before, down, ready_down, after

    try:
        before, down, ready_down, after = run(scenario())
    finally:
        server.stop()
    assert before.status_code == 200
    error = ErrorEnvelope.model_validate(down.json()).error
    assert down.status_code == 503 and error.code == "unavailable"
    assert "Redis" in error.message and "Retry-After" in down.headers
    assert ready_down.status_code == 503
    assert after.status_code == 200 and JudgeResponse.model_validate(after.json()).results[0].feasible is True
