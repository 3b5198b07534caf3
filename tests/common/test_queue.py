"""The Redis Streams queue and the worker loop, against a real redis-server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from cgpo.services.common.errors import QueueFullError
from cgpo.services.common.keys import Keys
from cgpo.services.common.queue import GatewayQueue, WorkerQueue
from cgpo.services.common.schemas import JobResult, QueueJob
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import Worker
from tests.common.handlers import EchoHandler

SERVICE = "echo"


def job(job_id: str, *texts: str, deadline_in_s: float = 30.0, **extra) -> QueueJob:
    return QueueJob(id=job_id, items=[{"text": t, **extra} for t in texts], deadline=time.time() + deadline_in_s)


def settings(url: str, **overrides) -> ServiceSettings:
    return ServiceSettings(redis_url=url, **overrides)


def worker_queue(url: str, consumer: str, visibility_s: float = 30.0, max_attempts: int = 3) -> WorkerQueue:
    q = WorkerQueue(url, Keys(SERVICE), consumer, visibility_timeout_s=visibility_s,
                    max_attempts=max_attempts, result_ttl_s=60)
    q.ensure_group()
    return q


async def submit_all(url: str, *jobs: QueueJob, max_queue: int = 100) -> list[bool]:
    q = GatewayQueue(url, Keys(SERVICE), max_queue=max_queue, result_ttl_s=60)
    try:
        return [await q.submit(j) for j in jobs]
    finally:
        await q.close()


def test_submit_is_idempotent_by_job_id(redis_url):
    assert asyncio.run(submit_all(redis_url, job("a", "x"), job("a", "x"), job("b", "y"))) == [True, False, True]
    assert redis.Redis.from_url(redis_url).xlen(Keys(SERVICE).stream) == 2


def test_full_queue_refuses_new_jobs(redis_url):
    with pytest.raises(QueueFullError):
        asyncio.run(submit_all(redis_url, job("a", "x"), job("b", "x"), job("c", "x"), max_queue=2))
    # the refused job left no idempotency marker behind: it can be submitted once there is room
    assert not redis.Redis.from_url(redis_url).exists(Keys(SERVICE).request("c"))


def test_worker_batches_jobs_and_answers_each(redis_url):
    asyncio.run(submit_all(redis_url, job("a", "x", "y"), job("b", "z")))
    handler = EchoHandler()
    Worker(handler, settings(redis_url), SERVICE).run(burst=True)
    assert handler.batches == [["x", "y", "z"]]

    async def results():
        q = GatewayQueue(redis_url, Keys(SERVICE), max_queue=10, result_ttl_s=60)
        await q.start()
        try:
            return await q.wait("a", 5), await q.wait("b", 5)
        finally:
            await q.close()

    a, b = asyncio.run(results())
    assert [o["text"] for o in a.outputs] == ["X", "Y"] and [o["text"] for o in b.outputs] == ["Z"]
    assert redis.Redis.from_url(redis_url).xlen(Keys(SERVICE).stream) == 0  # answered entries are deleted


def test_wait_is_woken_by_the_worker_not_by_polling(redis_url):
    async def scenario():
        q = GatewayQueue(redis_url, Keys(SERVICE), max_queue=10, result_ttl_s=60, poll_interval_s=30)
        await q.start()
        await asyncio.sleep(0.1)  # let the listener subscribe
        await q.submit(job("a", "x"))
        worker = Worker(EchoHandler(), settings(redis_url), SERVICE)
        thread = threading.Thread(target=worker.run, kwargs={"burst": True})
        thread.start()
        start = time.monotonic()
        result = await q.wait("a", 10)
        await q.close()
        thread.join()
        return result, time.monotonic() - start

    result, waited = asyncio.run(scenario())
    assert result.outputs[0]["text"] == "X"
    assert waited < 5  # well under the 30 s poll interval


def test_silent_workers_jobs_are_reclaimed_and_counted(redis_url):
    asyncio.run(submit_all(redis_url, job("a", "x")))
    dead = worker_queue(redis_url, "dead", visibility_s=0.2)
    [first] = dead.claim(10, block_ms=100)
    assert first.attempt == 1
    time.sleep(0.3)
    alive = worker_queue(redis_url, "alive", visibility_s=0.2)
    [again] = alive.claim(10, block_ms=100)
    assert again.job.id == "a" and again.attempt == 2


def test_touch_keeps_a_running_job_from_being_reclaimed(redis_url):
    asyncio.run(submit_all(redis_url, job("a", "x")))
    busy = worker_queue(redis_url, "busy", visibility_s=0.3)
    [claimed] = busy.claim(10, block_ms=100)
    for _ in range(4):
        time.sleep(0.15)
        busy.touch([claimed.entry_id])
    other = worker_queue(redis_url, "other", visibility_s=0.3)
    assert other.claim(10, block_ms=50) == []


def test_job_out_of_attempts_is_dead_lettered_and_answered(redis_url):
    asyncio.run(submit_all(redis_url, job("a", "x")))
    for i in range(2):
        q = worker_queue(redis_url, f"w{i}", visibility_s=0.1, max_attempts=1)
        time.sleep(0.15)
        claimed = q.claim(10, block_ms=50)
    assert claimed == []  # second delivery exceeded max_attempts=1
    r = redis.Redis.from_url(redis_url)
    result = JobResult.model_validate_json(r.get(Keys(SERVICE).result("a")))
    assert result.error is not None and result.error.code == "job_failed"
    dead = r.xrange(Keys(SERVICE).dead)
    assert len(dead) == 1 and dead[0][1][b"job"] == b"a"
    assert r.xlen(Keys(SERVICE).stream) == 0


def test_expired_job_is_answered_not_run(redis_url):
    asyncio.run(submit_all(redis_url, job("late", "x", deadline_in_s=-1), job("ok", "y")))
    handler = EchoHandler()
    Worker(handler, settings(redis_url), SERVICE).run(burst=True)
    assert handler.batches == [["y"]]
    r = redis.Redis.from_url(redis_url)
    late = JobResult.model_validate_json(r.get(Keys(SERVICE).result("late")))
    assert late.error.code == "deadline_exceeded"


def test_a_failing_batch_answers_errors_and_the_worker_goes_on(redis_url):
    asyncio.run(submit_all(redis_url, job("bad", "x", crash=True)))
    handler = EchoHandler()
    worker = Worker(handler, settings(redis_url, batch_max_wait_ms=0), SERVICE)
    worker.run(burst=True)
    asyncio.run(submit_all(redis_url, job("good", "y")))
    worker.run(burst=True)
    r = redis.Redis.from_url(redis_url)
    assert JobResult.model_validate_json(r.get(Keys(SERVICE).result("bad"))).error.code == "job_failed"
    assert JobResult.model_validate_json(r.get(Keys(SERVICE).result("good"))).outputs[0]["text"] == "Y"


def test_batch_respects_max_items(redis_url):
    asyncio.run(submit_all(redis_url, *[job(str(i), f"t{i}") for i in range(10)]))
    handler = EchoHandler()
    Worker(handler, settings(redis_url, batch_max_items=4), SERVICE).run(burst=True)
    assert [len(b) for b in handler.batches] == [4, 4, 2]


def test_worker_recreates_its_group_after_redis_lost_its_data(redis_url):
    handler = EchoHandler()
    worker = Worker(handler, settings(redis_url), SERVICE)
    worker.run(burst=True)
    redis.Redis.from_url(redis_url).flushall()  # what a restart without persistence looks like
    asyncio.run(submit_all(redis_url, job("a", "x")))
    worker.run(burst=True)
    assert handler.batches == [["x"]]
