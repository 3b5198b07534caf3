"""WorkerPool: order, hard timeouts, crashes, respawn, reuse across batches."""

from __future__ import annotations

import os
import signal
import time

import pytest

from services.judges.pool import PoolError, WorkerPool

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
    # 4 items of 0.3 s in one chunk: 1.2 s in all, each under the 0.5 s limit.
    items = [("sleep", 0.3)] * 4
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
