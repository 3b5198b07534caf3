"""What a hostile or unlucky caller must not be able to do to the services.

One item must not fail its batch-mates; output that cannot be written as JSON
must not kill a worker; text JSON cannot carry is refused at the door; request
ids are scoped by caller and bound to their body; unknown paths do not grow
the metrics; a late duplicate result never overwrites the first; a redelivered
job past its deadline is not run; a Redis restart does not fail the next burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid

import httpx
import pytest
import redis

from cgpo.services.common.keys import Keys
from cgpo.services.common.queue import GatewayQueue, WorkerQueue
from cgpo.services.common.schemas import JobResult, QueueJob
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import Worker, run_batch
from tests.common.handlers import SERVICE, EchoHandler, echo_app
from tests.conftest import RedisServer
from tests.procs import app_server, worker_thread


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def serve(settings: ServiceSettings, handler: EchoHandler | None = None):
    app = echo_app(settings, handler)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


def echo_worker(settings: ServiceSettings, handler: EchoHandler | None = None):
    return worker_thread(handler or EchoHandler(), settings, SERVICE)


async def _submit(redis_url: str, job: QueueJob) -> None:
    q = GatewayQueue(redis_url, Keys(SERVICE), max_queue=10, result_ttl_s=60)
    try:
        await q.submit(job)
    finally:
        await q.close()


# ------------------------------------------------------------------ one batch, many jobs


def test_an_invalid_item_fails_only_its_own_job():
    handler = EchoHandler()
    results = run_batch(handler, [("a", [{"text": "x"}]), ("b", [{"text": 3}]), ("c", [{"text": "z"}])])
    assert [r.id for r in results] == ["a", "b", "c"]
    assert [o["text"] for o in results[0].outputs] == ["X"] and [o["text"] for o in results[2].outputs] == ["Z"]
    assert results[1].outputs is None and results[1].error.code == "job_failed"


def test_a_crashing_job_fails_alone_and_its_batch_mates_are_answered():
    handler = EchoHandler()
    results = run_batch(handler, [("a", [{"text": "x"}]), ("b", [{"text": "y", "crash": True}]),
                                  ("c", [{"text": "z"}])])
    assert [o["text"] for o in results[0].outputs] == ["X"]
    assert results[1].error is not None and "crash requested" in results[1].error.message
    assert [o["text"] for o in results[2].outputs] == ["Z"]


def test_outputs_json_cannot_carry_are_made_writable_not_fatal():
    results = run_batch(EchoHandler(), [("a", [{"text": "x", "surrogate": True}]), ("b", [{"text": "y"}])])
    stored = [JobResult.model_validate_json(r.model_dump_json()) for r in results]  # raised before
    assert stored[0].outputs[0]["text"] == "X\ufffd" and stored[1].outputs[0]["text"] == "Y"


def test_the_batch_deadline_reaches_the_handler():
    handler = EchoHandler()
    run_batch(handler, [("a", [{"text": "x"}])], deadline=1234.5)
    assert handler.deadlines == [1234.5]


def test_worker_survives_a_result_it_cannot_serialize_and_passes_the_latest_deadline(redis_url):
    handler = EchoHandler()
    soon, later = time.time() + 30, time.time() + 60

    async def scenario():
        q = GatewayQueue(redis_url, Keys(SERVICE), max_queue=10, result_ttl_s=60)
        await q.start()
        try:
            await q.submit(QueueJob(id="bad", items=[{"text": "x", "surrogate": True}], deadline=soon))
            await q.submit(QueueJob(id="good", items=[{"text": "y"}], deadline=later))
            Worker(handler, ServiceSettings(redis_url=redis_url), SERVICE).run(burst=True)
            return await q.wait("bad", 5), await q.wait("good", 5)
        finally:
            await q.close()

    bad, good = run(scenario())
    assert bad.outputs[0]["text"] == "X\ufffd" and good.outputs[0]["text"] == "Y"
    assert handler.deadlines == [pytest.approx(later)]


# ------------------------------------------------------------------ queue semantics


def test_a_late_duplicate_result_is_discarded_and_counted(redis_url):
    keys = Keys(SERVICE)
    run(_submit(redis_url, QueueJob(id="j", items=[{"text": "x"}], deadline=time.time() + 30)))
    stopped = WorkerQueue(redis_url, keys, "stopped", visibility_timeout_s=0.2, max_attempts=3, result_ttl_s=60)
    stopped.ensure_group()
    first_claim = stopped.claim(1, 0)
    time.sleep(0.3)  # the first worker went silent (SIGSTOP) past the visibility timeout
    other = WorkerQueue(redis_url, keys, "other", visibility_timeout_s=0.2, max_attempts=3, result_ttl_s=60)
    second_claim = other.claim(1, 0)
    assert [c.job.id for c in second_claim] == ["j"]
    assert other.complete(second_claim[0], JobResult(id="j", outputs=[{"text": "FIRST"}])) is True
    # the stopped worker resumes and answers too: its result must not replace the one the client has
    assert stopped.complete(first_claim[0], JobResult(id="j", outputs=[{"text": "LATE"}])) is False
    stored = JobResult.model_validate_json(redis.Redis.from_url(redis_url).get(keys.result("j")))
    assert stored.outputs == [{"text": "FIRST"}]
    assert int(redis.Redis.from_url(redis_url).hget(keys.stats, "late_results")) == 1

    async def scraped():
        async with serve(ServiceSettings(redis_url=redis_url)) as client:
            return (await client.get("/metrics")).text

    assert 'cgpo_late_results{service="echo"} 1.0' in run(scraped())


def test_a_redelivered_job_past_its_deadline_is_answered_expired_not_run(redis_url):
    keys = Keys(SERVICE)
    run(_submit(redis_url, QueueJob(id="j", items=[{"text": "x"}], deadline=time.time() + 0.3)))
    dead = WorkerQueue(redis_url, keys, "dead", visibility_timeout_s=0.2, max_attempts=3, result_ttl_s=60)
    dead.ensure_group()
    assert dead.claim(1, 0)  # claimed, then the worker died
    time.sleep(0.4)
    handler = EchoHandler()
    Worker(handler, ServiceSettings(redis_url=redis_url, visibility_timeout_s=0.2), SERVICE).run(burst=True)
    assert handler.batches == []
    stored = JobResult.model_validate_json(redis.Redis.from_url(redis_url).get(keys.result("j")))
    assert stored.error is not None and stored.error.code == "deadline_exceeded"


def test_a_burst_right_after_a_redis_restart_is_served():
    server = RedisServer().start()
    settings = ServiceSettings(redis_url=server.url, request_timeout_s=10)

    async def burst(client: httpx.AsyncClient, n: int) -> list[httpx.Response]:
        return await asyncio.gather(*[client.post("/v1/echo", json={"items": [{"text": f"t{i}"}]})
                                      for i in range(n)])

    async def scenario():
        async with serve(settings) as client:
            with echo_worker(settings):
                warm = await burst(client, 24)  # fills the gateway's connection pool
                server.stop()
                server.start()
                await asyncio.sleep(0.5)
                after = await burst(client, 48)
                ready = await client.get("/readyz")
                return warm, after, ready

    try:
        warm, after, ready = run(scenario())
    finally:
        server.stop()
    assert all(r.status_code == 200 for r in warm)
    assert [r.status_code for r in after] == [200] * 48
    assert ready.status_code == 200


# ------------------------------------------------------------------ the gateway


LONE_SURROGATE_BODY = '{"items": [{"text": "ok \\ud800"}]}'


@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_text_json_cannot_carry_is_refused_with_the_envelope(mode, redis_url):
    settings = ServiceSettings(redis_url=redis_url if mode == "queue" else None, request_timeout_s=5)
    handler = EchoHandler()

    async def scenario():
        async with serve(settings, handler) as client:
            with echo_worker(settings) if mode == "queue" else contextlib.nullcontext():
                bad = await client.post("/v1/echo", content=LONE_SURROGATE_BODY,
                                        headers={"Content-Type": "application/json"})
                good = await client.post("/v1/echo", json={"items": [{"text": "ok"}]})
                return bad, good

    bad, good = run(scenario())
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert "surrogate" in bad.json()["error"]["detail"][0]["msg"]
    assert "items.0.text" in bad.json()["error"]["detail"][0]["msg"]
    assert good.status_code == 200 and good.json()["outputs"][0]["text"] == "OK"


@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_request_ids_are_scoped_by_key_and_bound_to_the_body(mode, redis_url):
    settings = ServiceSettings(redis_url=redis_url if mode == "queue" else None, api_keys=("k1", "k2"))
    rid = uuid.uuid4().hex

    def as_(key: str, text: str) -> dict:
        return {"json": {"items": [{"text": text}]},
                "headers": {"Authorization": f"Bearer {key}", "X-Request-ID": rid}}

    async def scenario():
        async with serve(settings) as client:
            with echo_worker(settings) if mode == "queue" else contextlib.nullcontext():
                first = await client.post("/v1/echo", **as_("k1", "one"))
                other_key = await client.post("/v1/echo", **as_("k2", "two"))
                other_body = await client.post("/v1/echo", **as_("k1", "three"))
                retry = await client.post("/v1/echo", **as_("k1", "one"))
                return first, other_key, other_body, retry

    first, other_key, other_body, retry = run(scenario())
    assert first.json()["outputs"][0]["text"] == "ONE"
    assert other_key.status_code == 200 and other_key.json()["outputs"][0]["text"] == "TWO"
    assert other_body.status_code == 409 and other_body.json()["error"]["code"] == "request_id_conflict"
    assert retry.status_code == 200 and retry.json() == first.json()


def test_unknown_paths_do_not_grow_the_metrics():
    async def scenario():
        async with serve(ServiceSettings()) as client:
            for _ in range(300):
                await client.get(f"/v1/{uuid.uuid4().hex}")
            await client.post("/v1/echo", json={"items": [{"text": "x"}]})
            return (await client.get("/metrics")).text

    text = run(scenario())
    requests = [line for line in text.splitlines() if line.startswith("cgpo_requests_total{")]
    assert len(requests) <= 4, requests
    assert 'path="unmatched"' in text and 'status="404"} 300.0' in text
    assert 'cgpo_requests_total{path="/v1/echo",service="echo",status="200"} 1.0' in text


def test_ops_pages_need_a_key_when_keys_are_set_unless_made_public():
    async def scenario(settings: ServiceSettings):
        async with serve(settings) as client:
            paths = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
            anonymous = {p: (await client.get(p)).status_code for p in paths}
            keyed = {p: (await client.get(p, headers={"Authorization": "Bearer k"})).status_code for p in paths}
            return anonymous, keyed

    anonymous, keyed = run(scenario(ServiceSettings(api_keys=("k",))))
    assert anonymous == {"/healthz": 200, "/readyz": 200, "/metrics": 401, "/openapi.json": 401, "/docs": 401}
    assert set(keyed.values()) == {200}
    anonymous, _ = run(scenario(ServiceSettings(api_keys=("k",), public_paths=("/healthz", "/metrics"))))
    assert anonymous["/metrics"] == 200 and anonymous["/readyz"] == 401 and anonymous["/docs"] == 401


# ------------------------------------------------------------------ slow clients (a real server)


@contextlib.contextmanager
def real_server(settings: ServiceSettings):
    with app_server(echo_app(settings)) as url:
        yield url, int(url.rsplit(":", 1)[1])


def stalled(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(data)
    return sock


def closed_by_server(sock: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing ``sock``; None if it is still open after ``within_s``."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_stalled_headers_and_bodies_are_cut_off_and_others_are_served():
    settings = ServiceSettings(header_timeout_s=1, body_timeout_s=1)
    with real_server(settings) as (url, port):
        half_headers = [stalled(port, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n") for _ in range(20)]
        silent = [stalled(port, b"") for _ in range(5)]
        half_body = [stalled(port, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 100\r\n\r\n{\"items\": [") for _ in range(5)]
        started = time.monotonic()
        ok = httpx.post(f"{url}/v1/echo", json={"items": [{"text": "hi"}]}, timeout=5)
        outcomes = [closed_by_server(s, 4.0) for s in half_headers + silent + half_body]
        took = time.monotonic() - started
        for sock in half_headers + silent + half_body:
            sock.close()
    assert ok.status_code == 200
    assert all(o is not None for o in outcomes), "a stalled connection was kept open"
    assert took < 4.0
    assert all(o.startswith(b"HTTP/1.1 408") for o in outcomes[:20])
    assert all(b"408" in o.split(b"\r\n", 1)[0] and b"request_timeout" in o for o in outcomes[25:])


def test_connections_past_the_cap_are_refused():
    settings = ServiceSettings(header_timeout_s=30, max_connections=8)
    with real_server(settings) as (url, port):
        held = [stalled(port, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n") for _ in range(8)]
        time.sleep(0.2)
        refused = httpx.post(f"{url}/v1/echo", json={"items": [{"text": "hi"}]}, timeout=5)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        served = httpx.post(f"{url}/v1/echo", json={"items": [{"text": "hi"}]}, timeout=5)
    assert refused.status_code == 503
    assert served.status_code == 200
