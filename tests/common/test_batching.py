from cgpo.services.common.batching import BatchPolicy, Pending


def pending(name: str, items: int = 1, arrived: float = 0.0, deadline: float = 100.0):
    return Pending(name, items, arrived, deadline)


def test_select_takes_oldest_first_up_to_max_items():
    policy = BatchPolicy(max_items=4)
    jobs = [pending("c", 2, arrived=3), pending("a", 2, arrived=1), pending("b", 1, arrived=2)]
    sel = policy.select(jobs, now_s=10)
    assert [p.job for p in sel.batch] == ["a", "b"]
    assert [p.job for p in sel.rest] == ["c"]
    assert sel.expired == []


def test_select_keeps_arrival_order_after_a_job_that_does_not_fit():
    policy = BatchPolicy(max_items=3)
    sel = policy.select([pending("a", 2, 1), pending("b", 2, 2), pending("c", 1, 3)], now_s=10)
    # c would fit but must not jump b
    assert [p.job for p in sel.batch] == ["a"]
    assert [p.job for p in sel.rest] == ["b", "c"]


def test_oversized_job_runs_alone_rather_than_starving():
    policy = BatchPolicy(max_items=4)
    sel = policy.select([pending("big", 10, 1), pending("small", 1, 2)], now_s=10)
    assert [p.job for p in sel.batch] == ["big"]
    assert [p.job for p in sel.rest] == ["small"]


def test_expired_jobs_are_dropped_never_run():
    policy = BatchPolicy(max_items=8)
    sel = policy.select([pending("late", deadline=5), pending("ok", deadline=50)], now_s=10)
    assert [p.job for p in sel.expired] == ["late"]
    assert [p.job for p in sel.batch] == ["ok"]


def test_wait_left_counts_from_the_oldest_job_and_stops_when_full():
    policy = BatchPolicy(max_items=4, max_wait_ms=50)
    assert policy.wait_left_s([], now_s=0) == 0
    assert abs(policy.wait_left_s([pending("a", arrived=1.0)], now_s=1.02) - 0.03) < 1e-9
    assert policy.wait_left_s([pending("a", arrived=1.0)], now_s=1.2) == 0
    assert policy.wait_left_s([pending("a", 4, arrived=1.0)], now_s=1.0) == 0


def test_invalid_policy_is_rejected():
    import pytest

    for kwargs in ({"max_items": 0}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError):
            BatchPolicy(**kwargs)
