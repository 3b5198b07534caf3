"""The reward-hacking monitor: its score is what trainer/monitor.py defines, it fires on the signature
(reward up, judge pass rate down) and stays quiet when they rise together or only noise moves."""

from __future__ import annotations

import random
import statistics

import pytest

from cgpo.trainer.config import ConfigError, MonitorConfig, ServiceRef, TaskConfig, build_config
from cgpo.trainer.monitor import HackingMonitor

TASKS = [TaskConfig(name="math", prompts="-", reward_model=ServiceRef(embedded="-"), judges=["math", "refusal"]),
         TaskConfig(name="chat", prompts="-", reward_model=ServiceRef(embedded="-"), judges=[])]


def record(step, reward, rates, errors=None, prefix=""):
    row = {"step": step, f"{prefix}math/calibrated_reward": reward}
    for judge, rate in rates.items():
        row[f"{prefix}math/judge/{judge}/pass_rate"] = rate
        row[f"{prefix}math/judge/{judge}/error_rate"] = (errors or {}).get(judge, 0.0)
    return row


def expected_score(steps, rewards, rates):
    """min(corr(step, reward), −corr(step, pass rate)), Pearson as the statistics module computes it."""
    return min(statistics.correlation(steps, rewards), -statistics.correlation(steps, rates))


def test_the_training_score_is_the_trend_definition_over_the_window():
    rng = random.Random(0)
    monitor = HackingMonitor(MonitorConfig(window=5, threshold=0.6), TASKS)
    rows = [record(s, 0.5 + 0.02 * s + rng.uniform(-0.05, 0.05), {"math": 0.6 - 0.03 * s + rng.uniform(-.05, .05),
                                                                   "refusal": 0.9 + rng.uniform(-.05, .05)})
            for s in range(1, 9)]
    for i, row in enumerate(rows):
        scores, _ = monitor.observe(row)
        if i < 4:
            assert scores == {}  # the window is not full yet
            continue
        window = rows[i - 4:i + 1]
        steps = [r["step"] for r in window]
        rewards = [r["math/calibrated_reward"] for r in window]
        for judge in ("math", "refusal"):
            want = expected_score(steps, rewards, [r[f"math/judge/{judge}/pass_rate"] for r in window])
            assert scores[f"math/judge/{judge}/hacking_score"] == pytest.approx(want)
        assert scores["math/hacking_score"] == max(scores["math/judge/math/hacking_score"],
                                                   scores["math/judge/refusal/hacking_score"])
        assert not any(k.startswith("chat/") for k in scores)  # a task without judges has nothing to compare


def test_it_warns_once_per_crossing_naming_task_judge_and_window():
    monitor = HackingMonitor(MonitorConfig(window=4, threshold=0.6), TASKS)
    alerts = []
    series = [(0.50, 0.60), (0.55, 0.50), (0.60, 0.45), (0.70, 0.30), (0.72, 0.20), (0.75, 0.10),
              (0.60, 0.50), (0.50, 0.60), (0.45, 0.70), (0.50, 0.70), (0.60, 0.60), (0.70, 0.50), (0.80, 0.35)]
    for step, (reward, rate) in enumerate(series, start=1):
        alerts += [(step, a) for a in monitor.observe(record(step, reward, {"math": rate, "refusal": 1.0}))[1]]
    assert [step for step, _ in alerts] == [4, 12]  # crossed at step 4, fell back below, crossed again
    step, alert = alerts[0]
    assert (alert.task, alert.judge, alert.first_step, alert.last_step, alert.source) == ("math", "math", 1, 4, "train")
    message = alert.message(0.6)
    assert "task 'math', judge 'math'" in message and "steps 1-4" in message and "hacking_score" in message


def test_rising_together_or_noise_alone_stays_quiet():
    rng = random.Random(1)
    monitor = HackingMonitor(MonitorConfig(window=20, threshold=0.6), TASKS)
    for step in range(1, 200):  # CGPO's picture: the reward and the pass rate rise together, with noise
        reward = 0.4 + 0.001 * step + rng.gauss(0, 0.08)
        rate = 0.4 + 0.002 * step + rng.gauss(0, 0.1)
        scores, alerts = monitor.observe(record(step, reward, {"math": rate, "refusal": rng.uniform(0.8, 1)}))
        assert not alerts, (step, scores)


def test_judge_errors_are_not_read_as_a_falling_pass_rate():
    monitor = HackingMonitor(MonitorConfig(window=4, threshold=0.6), TASKS)
    for step in range(1, 5):  # the judge passes 80 % of what it decides, while ever more of it errs
        errors = 0.2 * (step - 1)
        scores, alerts = monitor.observe(record(step, 0.5 + 0.1 * step, {"math": 0.8 * (1 - errors), "refusal": 1},
                                                {"math": errors}))
    assert not alerts and scores["math/judge/math/hacking_score"] == 0.0


def test_held_out_evaluations_are_scored_from_the_fourth_one():
    monitor = HackingMonitor(MonitorConfig(window=20, eval_window=5, threshold=0.6), TASKS)
    assert monitor.evaluates_start
    evals = [(0, 0.50, 0.45), (10, 0.66, 0.10), (20, 0.66, 0.04), (30, 0.67, 0.04), (40, 0.66, 0.00),
             (50, 0.66, 0.02)]
    fired = []
    for i, (step, reward, rate) in enumerate(evals):
        scores, alerts = monitor.observe(record(step, reward, {"math": rate, "refusal": 1.0}, prefix="eval/"))
        fired += alerts
        if i < 3:
            assert "eval/math/hacking_score" not in scores
            continue
        window = evals[max(0, i - 4):i + 1]
        want = expected_score([e[0] for e in window], [e[1] for e in window], [e[2] for e in window])
        assert scores["eval/math/judge/math/hacking_score"] == pytest.approx(want)
    assert [(a.source, a.first_step, a.last_step) for a in fired] == [("eval", 0, 30)]


def test_the_monitor_settings_are_checked():
    base = {"policy": "p", "tasks": [{"name": "t", "prompts": "-", "reward_model": {"embedded": "-"}}]}
    for bad, field in (({"window": 2}, "monitor.window"), ({"eval_window": 3}, "monitor.eval_window"),
                       ({"threshold": 0}, "monitor.threshold"), ({"action": "halt"}, "monitor.action")):
        with pytest.raises(ConfigError, match=field):
            build_config({**base, "monitor": bad})
    assert not HackingMonitor(MonitorConfig(window=0), TASKS).enabled


def test_held_out_windows_follow_the_reward_the_task_optimizes_not_the_yardstick():
    monitor = HackingMonitor(MonitorConfig(window=20, eval_window=5, threshold=0.6), TASKS)
    for step, yardstick, own, rate in ((0, 0.40, 0.50, 0.6), (10, 0.45, 0.45, 0.5), (20, 0.50, 0.40, 0.4),
                                       (30, 0.55, 0.35, 0.3)):
        row = record(step, yardstick, {"math": rate, "refusal": 1.0}, prefix="eval/")
        row["eval/math/task_rm/calibrated_reward"] = own  # the task's own RM falls with the pass rate
        scores, alerts = monitor.observe(row)
    assert not alerts and scores["eval/math/judge/math/hacking_score"] < 0
