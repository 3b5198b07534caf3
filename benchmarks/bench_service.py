"""REST + queue overhead and throughput of the judges service, against the same judges in-process.

Starts its own redis-server, a gateway (`cgpo judges serve`) and workers (`cgpo judges worker`) on
loopback, exactly as deployed, and measures:

* light load: p50/p95 latency of sequential one-item requests, in-process vs REST embedded vs REST+Redis;
* heavy load: items/s with 64 concurrent clients through REST+Redis vs the in-process handler.

    python benchmarks/bench_service.py --judge instructions --items-per-request 16

Needs the ``bench`` extra (aiohttp generates the load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stack import Stack as ProcessStack  # noqa: E402
from benchmarks.stack import percentiles, service_env  # noqa: E402
from cgpo.services.common.schemas import JudgeItem  # noqa: E402
from cgpo.services.judges.config import JudgeConfig  # noqa: E402
from cgpo.services.judges.handler import JudgeHandler  # noqa: E402
from cgpo.services.judges.registry import build  # noqa: E402

IFEVAL = REPO / "data" / "ifeval"


def workload(judge: str, n: int) -> list[dict]:
    """``n`` realistic items for ``judge``."""
    if judge == "instructions":
        prompts = [json.loads(line) for line in (IFEVAL / "input_data.jsonl").open()]
        responses = [json.loads(line) for line in (IFEVAL / "input_response_data_gpt4_20231107_145030.jsonl").open()]
        base = [{"prompt": p["prompt"], "response": r["response"], "judges": ["instructions"],
                 "metadata": {"instruction_id_list": p["instruction_id_list"], "kwargs": p["kwargs"]}}
                for p, r in zip(prompts, responses)]
    elif judge == "math":
        base = [{"prompt": f"What is {i} + {i}?", "response": f"{i} plus {i} is {2 * i}. The final answer is {2 * i}.",
                 "judges": ["math"], "metadata": {"answer": str(2 * i + (i % 3 == 0))}} for i in range(500)]
    else:
        base = [{"prompt": "Can you help?", "response": "Sure! Here is how to do it, step by step.",
                 "judges": ["refusal"]}, {"prompt": "Help?", "response": "I'm sorry, but I can't help with that.",
                                          "judges": ["refusal"]}]
    return [base[i % len(base)] for i in range(n)]


def in_process(judge: str, items: list[dict], batch: int) -> dict:
    handler = JudgeHandler(build(JudgeConfig(enabled=(judge,))))
    handler.setup()
    parsed = [JudgeItem.model_validate(i) for i in items]
    single = []
    for item in parsed[:200]:
        start = time.perf_counter()
        handler.predict([item])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(parsed), batch):
        handler.predict(parsed[i : i + batch])
    elapsed = time.perf_counter() - start
    handler.close()
    return {"items_per_s": round(len(parsed) / elapsed, 1), **percentiles(single)}


async def light_load(base: str, items: list[dict], n: int = 300) -> dict:
    async with aiohttp.ClientSession(base) as session:
        for item in items[:20]:  # warm up the connection and caches
            await post(session, [item])
        latencies = []
        for i in range(n):
            start = time.perf_counter()
            await post(session, [items[i % len(items)]])
            latencies.append(time.perf_counter() - start)
    return percentiles(latencies)


async def heavy_load(base: str, items: list[dict], clients: int, per_request: int, duration_s: float) -> dict:
    """``clients`` concurrent clients, each sending requests back to back for ``duration_s``."""
    done = 0
    stop_at = time.perf_counter() + duration_s

    async def one_client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        i = k * per_request
        while time.perf_counter() < stop_at:
            await post(session, [items[(i + j) % len(items)] for j in range(per_request)])
            i += per_request * clients
            done += per_request

    # aiohttp, not httpx, generates the load: httpx's pool itself tops out near 1k items/s at 64 clients
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=clients)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(k, session) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return {"items_per_s": round(done / elapsed, 1), "clients": clients, "items_per_request": per_request}


async def post(session: aiohttp.ClientSession, items: list[dict]) -> None:
    async with session.post("/v1/judge", json={"items": items}) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {body[:300]!r}")


class Stack(ProcessStack):
    """redis-server + gateway + workers as separate processes."""

    def __init__(self, judge: str, workers: int, redis: bool) -> None:
        env = service_env(CGPO_JUDGES_ENABLED=judge, CGPO_JUDGES_PROCESSES="1")
        super().__init__(["judges", "serve"], ["judges", "worker"], env, workers=workers, redis=redis)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--judge", default="instructions", choices=["instructions", "math", "refusal"])
    parser.add_argument("--items-per-request", type=int, default=16)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()
    items = workload(args.judge, 2048)

    report: dict[str, object] = {"judge": args.judge, "cores": os.cpu_count()}
    report["in_process"] = in_process(args.judge, items, batch=64)
    stack = Stack(args.judge, args.workers, redis=False)
    try:
        report["rest_embedded_light"] = asyncio.run(light_load(stack.base, items))
    finally:
        stack.close()
    stack = Stack(args.judge, args.workers, redis=True)
    try:
        report["rest_queue_light"] = asyncio.run(light_load(stack.base, items))
        report["rest_queue_heavy"] = asyncio.run(heavy_load(stack.base, items, args.clients,
                                                            args.items_per_request, args.duration_s))
    finally:
        stack.close()
    base_p50 = report["in_process"]["p50_ms"]  # type: ignore[index]
    report["overhead_p50_ms"] = round(report["rest_queue_light"]["p50_ms"] - base_p50, 3)  # type: ignore[index]
    report["heavy_vs_in_process"] = round(report["rest_queue_heavy"]["items_per_s"]  # type: ignore[index]
                                          / report["in_process"]["items_per_s"], 3)  # type: ignore[index]
    print(f"{'path':28} {'p50 ms':>8} {'p95 ms':>8} {'items/s':>9}")
    for key in ("in_process", "rest_embedded_light", "rest_queue_light", "rest_queue_heavy"):
        row = report[key]  # type: ignore[index]
        print(f"{key:28} {row.get('p50_ms', ''):>8} {row.get('p95_ms', ''):>8} {row.get('items_per_s', ''):>9}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
