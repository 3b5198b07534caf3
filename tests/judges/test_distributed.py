"""Gateway, Redis and worker processes started the way they are deployed, on loopback."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
import redis

from cgpo.services.common.keys import Keys
from tests.conftest import free_port
from tests.procs import answers_200, spawn, stop, wait_until

SLOW_CODE = "```python\nimport time\ntime.sleep(0.6)\n\ndef answer():\n    return 42\n```"


@pytest.fixture
def stack_env(redis_url, subprocess_env):
    env = dict(subprocess_env, CGPO_REDIS_URL=redis_url, CGPO_JUDGES_ENABLED="code,refusal",
               CGPO_VISIBILITY_TIMEOUT_S="1.5", CGPO_JUDGES_PROCESSES="2", CGPO_LOG_LEVEL="warning")
    return env


@pytest.mark.slow
def test_worker_killed_mid_batch_loses_no_accepted_request(stack_env, redis_url):
    port = free_port()
    procs = [spawn(["judges", "serve", "--port", str(port)], stack_env)]
    first_worker = spawn(["judges", "worker"], stack_env)
    procs.append(first_worker)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers_200(f"{base}/readyz"), what="gateway ready with a worker")
        items = [[{"prompt": f"p{i}", "response": SLOW_CODE, "judges": ["code"],
                   "metadata": {"unit_tests": ["assert answer() == 42"]}},
                  {"prompt": f"p{i}", "response": "I'm sorry, I can't help.", "judges": ["refusal"]}]
                 for i in range(6)]
        keys = Keys("judges")
        r = redis.Redis.from_url(redis_url)

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                calls = [asyncio.create_task(client.post("/v1/judge", json={"items": batch},
                                                         headers={"X-Request-ID": f"job-{i}"}))
                         for i, batch in enumerate(items)]
                await asyncio.to_thread(wait_until, lambda: r.xpending(keys.stream, keys.group)["pending"] > 0,
                                        60, "the first worker to claim a batch")
                os.killpg(first_worker.pid, signal.SIGKILL)  # mid-batch: its programs sleep 0.6 s
                procs.extend(spawn(["judges", "worker"], stack_env) for _ in range(2))
                return await asyncio.gather(*calls)

        responses = asyncio.run(scenario())
        assert [resp.status_code for resp in responses] == [200] * 6
        for resp in responses:
            code, refusal = resp.json()["results"]
            assert code["feasible"] is True, code
            assert refusal["verdicts"]["refusal"]["verdict"] == "fail"
        assert r.xlen(keys.stream) == 0 and r.xlen(keys.dead) == 0
    finally:
        for proc in procs:
            stop(proc)
