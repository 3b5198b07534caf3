import math

from cgpo.services.rm.calibration import MemoryCache, baseline_key, calibrated


def test_the_baseline_itself_scores_one_half():
    for r in (-30.0, -1.5, 0.0, 2.0, 1e3):
        assert calibrated(r, r) == 0.5


def test_calibrated_reward_is_a_monotone_sigmoid_of_the_gap():
    values = [calibrated(r, 1.0) for r in (-50, -2, 0, 0.5, 1, 3, 50)]
    assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
    assert math.isclose(calibrated(2.0, 1.0), 1 / (1 + math.exp(-1.0)))
    assert calibrated(1e6, 0) == 1.0 and calibrated(-1e6, 0) == 0.0  # no overflow


def test_cache_keys_separate_fields_and_lru_is_bounded():
    assert baseline_key("m", "ab", "c") != baseline_key("m", "a", "bc")
    assert baseline_key("m", "p", "b") != baseline_key("m2", "p", "b")
    cache = MemoryCache(max_entries=2)
    cache.put_many({"a": 1.0, "b": 2.0})
    assert cache.get_many(["a"]) == {"a": 1.0}  # touch a: b is now the oldest
    cache.put_many({"c": 3.0})
    assert cache.get_many(["a", "b", "c"]) == {"a": 1.0, "c": 3.0}
