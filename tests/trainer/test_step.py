"""The two-pass, micro-batched update is the gradient of ρ_l · L as the method defines L (docs/method.md §4),
on seeded random batches with judge errors and truncated responses, for every optimizer and rule."""

from __future__ import annotations

import random

import pytest

from tests.trainer.test_method import (
    PROMPT,
    assert_same_gradient,
    expected_grads,
    make_batch,
    make_task,
    method_of,
)
from cgpo.trainer.step import TaskBatch, task_update

B, K = 3, 4


def random_batch(optimizer: str, seed: int, **fields) -> TaskBatch:
    rng = random.Random(seed)
    prompts = [[1] + [rng.randrange(10, 200) for _ in range(rng.randrange(3, 8))] for _ in range(B)]
    responses = [[rng.randrange(10, 200) for _ in range(rng.randrange(1, 6))] for _ in range(B * K)]
    verdicts = [rng.choice(["pass", "pass", "fail", "error"]) for _ in range(B * K)]
    truncated = [rng.random() < 0.25 for _ in range(B * K)]
    task = make_task(optimizer, K, kl_max=50.0, beta=0.5, lam=0.3, weight=0.7, **fields)
    return make_batch(task, prompts, responses, [rng.uniform(-2, 2) for _ in range(B * K)], verdicts, truncated,
                      [[rng.randrange(10, 200) for _ in range(3)] for _ in range(B)],
                      [rng.uniform(-1, 1) for _ in range(B)], [True, False, True])


@pytest.mark.parametrize("optimizer", ["crpg", "codpo", "crraft"])
@pytest.mark.parametrize("rules", [{}, {"on_judge_error": "violation", "on_truncation": "mask"},
                                   {"on_truncation": "keep"}])
def test_two_pass_update_is_the_methods_gradient(models, optimizer, rules):
    policy, reference = models
    batch = random_batch(optimizer, seed=3, **rules)
    want = expected_grads(policy, batch, method_of(policy, reference, batch).coefficients)
    policy.zero_grad()
    metrics, times = task_update(policy, reference, batch, temperature=1.0, micro_batch_size=2)
    assert_same_gradient([p.grad for p in policy.parameters()], want)
    assert {"loss", "kl", "reward", "judge/j/pass_rate", "used_fraction", "truncated_rate",
            "masked_rate"} <= set(metrics)
    assert set(times) == {"logprobs", "backward"} and all(v > 0 for v in times.values())


def test_metrics_count_what_the_rules_say(models):
    policy, reference = models
    task = make_task("crpg", 2, on_judge_error="mask", on_truncation="violation")
    batch = make_batch(task, [PROMPT] * 2, [[10, 11], [12], [13, 14, 15], [16]], [0.0] * 4,
                       ["pass", "error", "pass", "fail"], [False, False, True, False], [[20], [21]], [0.0, 0.0],
                       [True, True])
    metrics, _ = task_update(policy, reference, batch, temperature=1.0, micro_batch_size=4)
    assert metrics["feasible_rate"] == 0.25  # one pass that finished; the cut pass is a violation
    assert metrics["masked_rate"] == 0.25 and metrics["error_rate"] == 0.25
    assert metrics["truncated_rate"] == 0.25 and metrics["used_fraction"] == 0.75
    assert metrics["judge/j/pass_rate"] == 0.5 and metrics["response_tokens"] == 7 / 4


def test_with_every_sample_failing_crpg_does_nothing(models):
    policy, reference = models
    batch = random_batch("crpg", seed=4)
    for verdicts in batch.scores.verdicts:
        verdicts["j"] = "fail"
    policy.zero_grad()
    task_update(policy, reference, batch, temperature=1.0, micro_batch_size=3)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in policy.parameters())


def test_the_spread_of_a_batch_is_reported_per_task():
    import torch

    from cgpo.trainer.step import spread

    rewards = [1.0, 1.0, 1.0, 0.0, 2.0, 4.0]  # K = 3: the first prompt's samples all scored the same
    out = spread(rewards, [2, 4, 6, 1, 1, 10], 3, torch.tensor([-1.0, -2.0, -3.0, -0.5, -0.5, -5.0]))
    mean = sum(rewards) / 6
    assert out == {"response_tokens": 4.0, "response_tokens_min": 1.0, "response_tokens_max": 10.0,
                   "reward_std": pytest.approx((sum((r - mean) ** 2 for r in rewards) / 6) ** 0.5),
                   "same_reward_prompts": 0.5, "entropy": pytest.approx(12.0 / 24)}
