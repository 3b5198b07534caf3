"""RM gateway, Redis and worker processes on loopback: a worker killed mid-batch loses no request."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
import redis

from cgpo.services.common.keys import Keys
from cgpo.services.rm.model import RewardModel
from tests.conftest import free_port
from tests.procs import answers_200, spawn, stop, wait_until
from tests.rm.conftest import tiny_rm

PROMPT = "Tell me about the history of Rome. " * 20


@pytest.fixture(scope="module")
def slow_rm(tmp_path_factory):
    """Big enough that one 48-item batch of ~400 tokens takes about a second on 2 cores."""
    return tiny_rm(tmp_path_factory.mktemp("rm-128"), hidden_size=128, num_layers=2, num_heads=2)


@pytest.mark.slow
def test_rm_worker_killed_mid_batch_loses_no_accepted_request(slow_rm, redis_url, subprocess_env):
    env = dict(subprocess_env, CGPO_REDIS_URL=redis_url, CGPO_VISIBILITY_TIMEOUT_S="1.5",
               CGPO_RM_MODELS=f"helpful={slow_rm}", CGPO_LOG_LEVEL="warning")
    port = free_port()
    procs = [spawn(["rm", "serve", "--port", str(port)], env)]
    first_worker = spawn(["rm", "worker"], env)
    procs.append(first_worker)
    base = f"http://127.0.0.1:{port}"
    keys = Keys("rm")
    r = redis.Redis.from_url(redis_url)
    requests = [[{"prompt": PROMPT, "response": f"Answer {j}.{i}: Rome is very old. " * 20,
                  "baseline": "Rome is old."} for i in range(48)] for j in range(4)]
    try:
        wait_until(lambda: answers_200(f"{base}/readyz"), 60, "gateway ready with a worker")

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                calls = [asyncio.create_task(client.post("/v1/score", json={"model": "helpful", "items": items},
                                                         headers={"X-Request-ID": f"rm-{j}"}))
                         for j, items in enumerate(requests)]
                await asyncio.to_thread(wait_until, lambda: r.xpending(keys.stream, keys.group)["pending"] > 0,
                                        60, "the first worker to claim a batch")
                os.killpg(first_worker.pid, signal.SIGKILL)
                procs.extend(spawn(["rm", "worker"], env) for _ in range(2))
                return await asyncio.gather(*calls)

        responses = asyncio.run(scenario())
    finally:
        for proc in procs:
            stop(proc)
    assert [resp.status_code for resp in responses] == [200] * 4
    model = RewardModel("x", str(slow_rm))
    model.load()
    for items, resp in zip(requests, responses, strict=True):
        results = resp.json()["results"]
        assert len(results) == 48
        first = items[0]
        expected = model.score([model.encode(first["prompt"], first["response"]).ids])[0]
        assert results[0]["reward"] == pytest.approx(expected, abs=1e-4)
    assert r.xlen(keys.stream) == 0 and r.xlen(keys.dead) == 0
