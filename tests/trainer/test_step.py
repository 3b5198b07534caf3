"""The two-pass, micro-batched update equals the plain gradient of ρ_l · L for every optimizer."""

from __future__ import annotations

import random

import pytest
import torch

from trainer.config import ServiceRef, TaskConfig
from trainer.logprobs import sequence_logprobs
from trainer.rollout import Rollouts
from trainer.scoring import TaskScores
from trainer.step import Outcome, TaskBatch, _task_loss, task_update
from tests.tiny_models import build_model, build_tokenizer

B, K = 3, 4


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, hidden_size=32, num_heads=2, seed=1)
    reference = build_model(tokenizer, hidden_size=32, num_heads=2, seed=1)
    with torch.no_grad():  # make the policy differ from the reference a little
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return policy, reference


def make_batch(optimizer: str, seed: int = 0, errored: bool = False) -> TaskBatch:
    rng = random.Random(seed)
    prompt_ids = [[1] + [rng.randrange(10, 200) for _ in range(rng.randrange(3, 8))] for _ in range(B)]
    responses = [[rng.randrange(10, 200) for _ in range(rng.randrange(1, 6))] for _ in range(B * K)]
    verdicts = [{"j": rng.choice(["pass", "pass", "fail"])} for _ in range(B * K)]
    if errored:
        verdicts[1] = {"j": "error"}
        verdicts[5] = {"j": "error"}
    rewards = [rng.uniform(-2, 2) for _ in range(B * K)]
    base = [rng.uniform(-1, 1) for _ in range(B)]
    baseline_reward = [base[i // K] for i in range(B * K)]
    scores = TaskScores(verdicts=verdicts, reward=rewards, baseline_reward=baseline_reward,
                        calibrated=[1 / (1 + torch.exp(torch.tensor(b - r)).item())
                                    for r, b in zip(rewards, baseline_reward)])
    rollouts = Rollouts(prompt_index=[i // K for i in range(B * K)],
                        prompt_ids=[prompt_ids[i // K] for i in range(B * K)], response_ids=responses,
                        text=["x"] * (B * K), sampling_logprobs=[0.0] * (B * K), finished=[True] * (B * K))
    task = TaskConfig(name="t", prompts="-", reward_model=ServiceRef(embedded="-"), judges=["j"],
                      optimizer=optimizer, k=K, kl_max=50.0, beta=0.5, lam=0.3, weight=0.7)
    baseline_ids = [[rng.randrange(10, 200) for _ in range(3)] for _ in range(B)]
    return TaskBatch(task, prompt_ids, rollouts, scores, baseline_ids, [True, False, True])


def direct_grads(policy, reference, batch: TaskBatch, unconstrained: bool = False) -> list[torch.Tensor]:
    """∇(ρ_l · L) the plain way: one forward with grad over every sequence, then backward."""
    prompts = [batch.prompt_ids[p] for p in batch.rollouts.prompt_index] + batch.prompt_ids
    responses = list(batch.rollouts.response_ids) + batch.baseline_ids
    policy.zero_grad()
    logp = sequence_logprobs(policy, prompts, responses, 1.0, 64).logprobs
    with torch.no_grad():
        ref = sequence_logprobs(reference, prompts, responses, 1.0, 64).logprobs
    outcome = Outcome(batch.scores, [len(r) for r in batch.rollouts.response_ids], batch.baseline_feasible)
    loss, _ = _task_loss(batch.task, logp, ref, outcome, unconstrained)
    (batch.task.weight * loss).backward()
    return [p.grad.clone() for p in policy.parameters()]


@pytest.mark.parametrize("optimizer", ["crpg", "codpo", "crraft"])
@pytest.mark.parametrize("errored", [False, True])
def test_two_pass_update_equals_the_direct_gradient(models, optimizer, errored):
    policy, reference = models
    batch = make_batch(optimizer, seed=3, errored=errored)
    expected = direct_grads(policy, reference, batch)
    policy.zero_grad()
    metrics, times = task_update(policy, reference, batch, temperature=1.0, micro_batch_size=2)
    got = [p.grad for p in policy.parameters()]
    assert any(g.abs().sum() > 0 for g in expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert {"loss", "kl", "reward", "judge/j/pass_rate", "used_fraction"} <= set(metrics)
    assert set(times) == {"logprobs", "backward"} and all(v > 0 for v in times.values())


def test_unconstrained_baseline_ignores_the_judges(models):
    policy, reference = models
    batch = make_batch("crraft", seed=4)
    expected = direct_grads(policy, reference, batch, unconstrained=True)
    policy.zero_grad()
    task_update(policy, reference, batch, temperature=1.0, micro_batch_size=3, unconstrained=True)
    for g, e in zip([p.grad for p in policy.parameters()], expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # with every verdict a fail, CRPG does nothing, the unconstrained baseline still moves
    for v in batch.scores.verdicts:
        v["j"] = "fail"
    policy.zero_grad()
    batch.task.optimizer = "crpg"
    task_update(policy, reference, batch, temperature=1.0, micro_batch_size=3)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in policy.parameters())
