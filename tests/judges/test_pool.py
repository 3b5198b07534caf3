"""WorkerPool: order, hard timeouts, crashes, respawn, reuse across batches."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cgpo.services.judges.pool import PoolError, Result, WorkerPool

TIMEOUT_S = 0.5


# Worker functions must be top-level so the worker can import them.
def behave(item: tuple[str, object]) -> object:
    kind, value = item
    if kind == "hang":
        time.sleep(3600)
    if kind == "crash":
        os._exit(3)
    if kind == "raise":
        raise ValueError(f"bad item {value}")
    if kind == "sleep":
        time.sleep(value)  # type: ignore[arg-type]
    if kind == "unpicklable":
        return lambda: None
    return value


def square(x: int) -> int:
    return x * x


def broken_initializer() -> None:
    raise RuntimeError("cannot start")


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(behave, workers=2, timeout_s=TIMEOUT_S, chunk_size=4) as p:
        yield p


def ok_items(n: int) -> list[tuple[str, int]]:
    return [("ok", i) for i in range(n)]


def assert_ok(results, items) -> None:
    for r, (kind, value) in zip(results, items, strict=True):
        if kind == "ok":
            assert r.ok and r.value == value, r


def test_results_in_order_for_a_large_batch():
    with WorkerPool(square, workers=2) as p:
        results = p.map(list(range(5000)))
    assert [r.value for r in results] == [i * i for i in range(5000)]
    assert all(r.status == "ok" for r in results)


def test_empty_batch(pool):
    assert pool.map([]) == []


def test_hang_times_out_within_bound_and_rest_is_answered(pool):
    items = ok_items(30)
    items[5] = ("hang", None)
    restarts = pool.restarts
    start = time.monotonic()
    results = pool.map(items)
    elapsed = time.monotonic() - start
    assert results[5].status == "timeout" and "0.5s" in results[5].error
    assert_ok(results, items)
    assert elapsed < TIMEOUT_S + 2.0  # the kill, not the 3600 s sleep, ends it
    assert pool.restarts == restarts + 1


def test_every_worker_hanging_at_once(pool):
    items = ok_items(16)
    items[0] = items[2] = ("hang", None)  # chunks of 2: one hang per worker, at the same time
    results = pool.map(items)
    assert [r.status for r in results] == ["timeout", "ok"] * 2 + ["ok"] * 12
    assert_ok(results, items)


def test_timeout_is_per_item_not_per_chunk(pool):
    # 4 items of 0.3 s in one chunk (chunks of 4 for 32 items): 1.2 s in all, each under the 0.5 s limit.
    items = [("sleep", 0.3)] * 4 + ok_items(28)
    results = pool.map(items)
    assert all(r.ok for r in results), results


def test_crash_errors_that_item_only(pool):
    items = ok_items(20)
    items[7] = ("crash", None)
    results = pool.map(items)
    assert results[7].status == "crashed" and "exit code 3" in results[7].error
    assert_ok(results, items)


def test_exception_is_an_error_result_and_keeps_the_worker(pool):
    restarts = pool.restarts
    results = pool.map([("raise", 1), ("ok", 2), ("unpicklable", None)])
    assert results[0].status == "error" and results[0].error == "ValueError: bad item 1"
    assert results[1].value == 2
    assert results[2].status == "error" and "could not be sent" in results[2].error
    assert pool.restarts == restarts


def test_pool_serves_the_next_batch_after_failures(pool):
    pool.map([("hang", None), ("crash", None), *ok_items(5)])
    items = ok_items(200)
    assert_ok(pool.map(items), items)


def test_worker_killed_between_batches_is_respawned(pool):
    os.kill(pool.pids[0], signal.SIGKILL)
    time.sleep(0.1)
    restarts = pool.restarts
    items = ok_items(50)
    assert_ok(pool.map(items), items)
    assert pool.restarts == restarts + 1


def test_map_before_setup_raises():
    with pytest.raises(PoolError):
        WorkerPool(square, workers=1).map([1])


def test_close_is_idempotent_and_setup_restarts():
    p = WorkerPool(square, workers=1)
    p.setup()
    p.close()
    p.close()
    p.setup()
    try:
        assert p.map([3])[0].value == 9
    finally:
        p.close()


def test_workers_that_never_start_raise_pool_error():
    p = WorkerPool(square, workers=1, initializer=broken_initializer, max_start_failures=2)
    with pytest.raises(PoolError, match="before they are ready"):
        p.setup()
    p.close()


def test_fork_is_refused():
    with pytest.raises(ValueError, match="fork"):
        WorkerPool(square, start_method="fork")  # type: ignore[arg-type]


# ---------------------------------------------------------------- per-call limits and deadlines


def test_per_call_timeout_overrides_the_pools(pool):
    results = pool.map([("sleep", 0.3), ("ok", 1)], timeout_s=0.1)
    assert results[0].status == "timeout" and results[0].error == "timed out after 0.1s"
    assert results[1].ok
    assert pool.map([("sleep", 0.3)])[0].ok  # the pool's own 0.5 s again


def test_deadline_kills_running_items_and_answers_the_rest(pool):
    # Chunks of 4: two chunks of quick items, then two workers running hangs, then the rest.
    items = ok_items(8) + [("hang", None)] * 6 + ok_items(40)
    restarts = pool.restarts
    start = time.monotonic()
    results = pool.map(items, timeout_s=60, deadline=time.time() + 1.0)
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.5  # not 6 hangs x 60 s
    assert_ok(results[:8], items[:8])  # done before the deadline: kept
    assert {r.status for r in results[8:]} == {"deadline"}
    stopped = [i for i, r in enumerate(results) if r.error == "stopped at the request's deadline"]
    assert stopped == [8, 12]  # one hang running per worker
    assert all(r.error == "not run: the request's deadline had passed" for r in results[9:12] + results[13:])
    assert pool.restarts == restarts + 2
    ok = ok_items(20)
    start = time.monotonic()
    assert_ok(pool.map(ok), ok)  # the respawned workers serve the next call
    assert time.monotonic() - start < 1.0


def test_past_deadline_runs_nothing(pool):
    restarts = pool.restarts
    results = pool.map([("crash", None)] * 3, deadline=time.time() - 1)
    assert [r.status for r in results] == ["deadline"] * 3
    assert pool.restarts == restarts  # nothing ran, so nothing crashed


def test_quick_results_held_back_are_not_blamed_for_a_hang(pool):
    # Results of quick items are sent in batches; a hang right after them must still be
    # attributed to the hanging item, and the quick ones answered.
    items = [("ok", 0), ("ok", 1), ("ok", 2), ("hang", None)] * 2
    results = pool.map(items)
    assert [r.status for r in results] == ["ok", "ok", "ok", "timeout"] * 2
    assert_ok(results, items)


def test_an_item_after_a_slow_one_gets_its_own_clock(pool):
    # One chunk of two items (chunks of 2 for 9 items on 2 workers): 0.4 s, then 0.45 s, each
    # under the 0.5 s limit. The second item's clock must start when the first one's result
    # arrives, not when the chunk was sent (which would kill it 0.1 s in).
    items = [("sleep", 0.4), ("sleep", 0.45)] + ok_items(7)
    assert all(r.ok for r in pool.map(items))


def test_result_reason_names_what_failed():
    assert Result("timeout", error="timed out after 5s").reason("math-verify") == "math-verify timed out after 5s"
    assert Result("crashed", error="worker died").reason("x") == "x crashed: worker died"
    assert "deadline" in Result("deadline", error="stopped at the request's deadline").reason("x")


PROGRAM = '''
import os, sys
with open(sys.argv[1], "a") as marks:  # stands for a training script's top level: import trl, transformers...
    marks.write(f"{os.getpid()}\\n")

if __name__ == "__main__":
    import asyncio
    from cgpo.services.judges.config import JudgeConfig
    from cgpo.services.judges.embedded import embedded_judges

    async def judged():
        async with embedded_judges(JudgeConfig(enabled=("math",))) as client:
            item = {"prompt": "1+1?", "response": "The answer is \\\\boxed{2}.", "judges": ["math"],
                    "metadata": {"answer": "2"}}
            return (await client.judge([item]))[0].verdicts["math"].verdict

    print(asyncio.run(judged()))
'''


def test_workers_started_inside_another_program_never_run_its_main_module(tmp_path):
    """Embedded judges in a user's script: the math judge's workers import this package, not the script
    (which would re-run its imports — TRL, transformers — in every worker)."""
    import subprocess
    import sys

    script, marks = tmp_path / "train.py", tmp_path / "marks.txt"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGPO_")}
    done = subprocess.run([sys.executable, str(script), str(marks)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("pass")
    assert len(marks.read_text().split()) == 1  # the program's own process only
