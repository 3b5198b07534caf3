"""The update follows the method (docs/method.md §4), checked on small hand-built batches.

Each test states the selection the method makes on its batch by hand, checks the plain-Python restatement
of docs/method.md §4 (tests/trainer/method.py) agrees, and then compares the parameter gradient that
``task_update`` accumulates with Σ_i g_i ∇_w log π_w(a_i), where g_i comes from that restatement and
log π_w from a direct forward pass written here. No helper of trainer/ computes any expected value.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.tiny_models import build_model, build_tokenizer
from tests.trainer.method import Expected, Seq, expected, sigmoid
from cgpo.trainer.config import ServiceRef, TaskConfig
from cgpo.trainer.rollout import Rollouts
from cgpo.trainer.scoring import TaskScores
from cgpo.trainer.step import TaskBatch, task_update

PROMPT = [1, 40, 41, 42, 43]


def logprob(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log π(response | prompt) at temperature 1, straight from the model's logits, dropout off."""
    model.eval()
    if not response:
        return torch.zeros(())
    ids = torch.tensor([prompt + response])
    logq = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # position t predicts t + 1
    targets = ids[0, 1:]
    return logq[torch.arange(len(targets)), targets][len(prompt) - 1:].sum()


def seq(policy, reference, prompt, response, **fields) -> Seq:
    with torch.no_grad():
        return Seq(logprob(policy, prompt, response).item(), logprob(reference, prompt, response).item(),
                   length=len(response), **fields)


def make_task(optimizer: str, k: int, **fields) -> TaskConfig:
    return TaskConfig(name="t", prompts="-", reward_model=ServiceRef(embedded="-"), judges=["j"],
                      optimizer=optimizer, k=k, **fields)


def make_batch(task: TaskConfig, prompts, responses, rewards, verdicts, truncated, baseline_ids, baseline_rewards,
               baseline_ok) -> TaskBatch:
    k, n = task.k, len(responses)
    rollouts = Rollouts(prompt_index=[i // k for i in range(n)], prompt_ids=[prompts[i // k] for i in range(n)],
                        response_ids=responses, text=["x"] * n, sampling_logprobs=[0.0] * n,
                        finished=[not t for t in truncated])
    base = [baseline_rewards[i // k] for i in range(n)]
    scores = TaskScores(verdicts=[{"j": v} for v in verdicts], reward=list(rewards), baseline_reward=base,
                        calibrated=[sigmoid(r - b) for r, b in zip(rewards, base)])
    return TaskBatch(task, prompts, rollouts, scores, baseline_ids, list(baseline_ok))


def sequences(policy, reference, batch: TaskBatch) -> tuple[list[Seq], list[Seq]]:
    k = batch.task.k
    samples = [seq(policy, reference, batch.prompt_ids[i // k], r, reward=batch.scores.reward[i],
                   verdicts=batch.scores.verdicts[i], truncated=not batch.rollouts.finished[i])
               for i, r in enumerate(batch.rollouts.response_ids)]
    baselines = [seq(policy, reference, p, a) for p, a in zip(batch.prompt_ids, batch.baseline_ids)]
    return samples, baselines


def method_of(policy, reference, batch: TaskBatch, **overrides) -> Expected:
    task = batch.task
    samples, baselines = sequences(policy, reference, batch)
    settings = dict(kl_max=task.kl_max, beta=task.beta, lam=task.lam, weight=task.weight,
                    on_judge_error=task.on_judge_error, on_truncation=task.on_truncation,
                    baseline_ok=batch.baseline_feasible)
    return expected(task.optimizer, samples, baselines, batch.scores.baseline_reward[::task.k], task.k,
                    **{**settings, **overrides})


def expected_grads(policy, batch: TaskBatch, coefficients: list[float]) -> list[torch.Tensor]:
    """∇_w Σ_i g_i log π_w(a_i), samples then baselines."""
    k = batch.task.k
    pairs = [(batch.prompt_ids[i // k], r) for i, r in enumerate(batch.rollouts.response_ids)]
    pairs += list(zip(batch.prompt_ids, batch.baseline_ids))
    policy.zero_grad()
    total = sum(g * logprob(policy, p, r) for g, (p, r) in zip(coefficients, pairs) if g != 0.0)
    if isinstance(total, torch.Tensor):
        total.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in policy.parameters()]


def trainer_grads(policy, reference, batch: TaskBatch, **kwargs) -> list[torch.Tensor]:
    policy.zero_grad()
    task_update(policy, reference, batch, temperature=1.0, micro_batch_size=3, **kwargs)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in policy.parameters()]


def assert_same_gradient(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert any(w.abs().sum() > 0 for w in want), "the fixture must move the policy"
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def check(policy, reference, batch: TaskBatch, selection) -> None:
    """The method selects ``selection`` (by hand), and the trainer's gradient is the method's."""
    method = method_of(policy, reference, batch)
    assert method.selection == selection
    assert_same_gradient(trainer_grads(policy, reference, batch), expected_grads(policy, batch, method.coefficients))


def responses(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 200) for _ in range(rng.randrange(2, 6))] for _ in range(n)]


# ---------------------------------------------------------------- judge errors (masked samples)

VERDICTS = ["pass", "pass", "error", "error", "fail", "pass", "error", "error", "pass"]
REWARDS = [1.0, 0.2, -0.5, 5.0, 0.0, 1.0, 0.3, -1.0, 0.1]
# by hand, per prompt of K = 3: (a⁺, a⁻) within the prompt, or None when skipped
CODPO_BY_HAND = {
    # pass, pass, error: the pair is (best, worst) of the two passes; a masked sample is never a⁻
    # error, fail, pass: a⁺ the pass, a⁻ the fail (the masked sample is not the lowest-reward one either)
    # error, error, pass: one usable sample, no pair
    "mask": [(0, 1), (2, 1), None],
    # the errors are violations: they are a⁻ candidates like any fail
    "violation": [(0, 2), (2, 1), (2, 1)],
}


@pytest.mark.parametrize("on_judge_error", ["mask", "violation"])
def test_codpo_never_pairs_a_masked_sample_and_violation_means_infeasible(models, on_judge_error):
    policy, reference = models
    task = make_task("codpo", 3, beta=0.5, lam=0.3, weight=0.7, on_judge_error=on_judge_error)
    batch = make_batch(task, [PROMPT] * 3, responses(1, 9), REWARDS, VERDICTS, [False] * 9, responses(2, 3),
                       [0.1, -0.2, 0.3], [True] * 3)
    check(policy, reference, batch, CODPO_BY_HAND[on_judge_error])


@pytest.mark.parametrize("on_judge_error", ["mask", "violation"])
def test_crpg_batch_mean_leaves_masked_samples_out(models, on_judge_error):
    policy, reference = models
    task = make_task("crpg", 3, kl_max=50.0, weight=0.7, on_judge_error=on_judge_error)
    batch = make_batch(task, [PROMPT] * 3, responses(3, 9), REWARDS, VERDICTS, [False] * 9, responses(4, 3),
                       [0.1, -0.2, 0.3], [True] * 3)
    used = {"mask": [0, 1, 4, 5, 8], "violation": list(range(9))}[on_judge_error]
    check(policy, reference, batch, used)


@pytest.mark.parametrize("on_judge_error", ["mask", "violation"])
def test_crraft_never_picks_a_masked_sample(models, on_judge_error):
    policy, reference = models
    task = make_task("crraft", 3, kl_max=1e3, on_judge_error=on_judge_error)
    verdicts = ["error", "pass", "pass", "error", "fail", "fail"]
    rewards = [9.0, 0.5, -1.0, 4.0, 0.0, 1.0]
    batch = make_batch(task, [PROMPT] * 2, responses(5, 6), rewards, verdicts, [False] * 6, responses(6, 2),
                       [0.0, 0.0], [True, False])
    # the highest reward is an error: a* is the best pass; prompt 1 has nothing and ā does not pass
    check(policy, reference, batch, [1, None])


# ---------------------------------------------------------------- CRRAFT: KL filter and fallback


@pytest.fixture(scope="module")
def kl_fixture(models):
    """Responses whose ρ lies on either side of a KL_max that binds: ρ > KL_max for ``high``, ≤ for ``low``."""
    policy, reference = models
    pool = responses(11, 40)
    rho = [seq(policy, reference, PROMPT, r).rho for r in pool]
    ordered = sorted(range(len(pool)), key=lambda i: rho[i])
    positive = [i for i in ordered if rho[i] > 0.05]
    assert len(positive) >= 6, "the perturbed policy should put several responses above π_ref"
    middle = len(positive) // 2
    gaps = [(rho[positive[j + 1]] - rho[positive[j]], j) for j in range(middle - 2, middle + 2)]
    gap, j = max(gaps)
    kl_max = (rho[positive[j]] + rho[positive[j + 1]]) / 2
    assert gap > 1e-3 and kl_max > 0
    high = [pool[i] for i in ordered if rho[i] > kl_max]
    low = [pool[i] for i in ordered if rho[i] <= kl_max]
    return kl_max, high, low


def crraft_fixture(task: TaskConfig, kl_fixture) -> TaskBatch:
    kl_max, high, low = kl_fixture
    samples = [
        high[0], low[0], low[1],  # 0: the best passing sample is past KL_max: a* is the next one
        low[2], low[3], low[4],  # 1: nothing passes, ā passes within KL_max: train on ā (w = 0.5)
        low[5], low[6], low[7],  # 2: nothing passes, ā passes but ρ(ā) > KL_max: skip
    ]
    verdicts = ["pass", "pass", "fail", "fail", "error", "fail", "fail", "fail", "error"]
    rewards = [3.0, 1.0, 5.0, 2.0, 7.0, -1.0, 0.5, 1.5, 2.5]
    return make_batch(task, [PROMPT] * 3, samples, rewards, verdicts, [False] * 9, [low[-1], low[-2], high[-1]],
                      [0.4, -0.3, 0.2], [True, True, True])


def test_crraft_kl_filter_binds_and_the_fallback_trains_on_the_baseline(models, kl_fixture):
    policy, reference = models
    kl_max = kl_fixture[0]
    task = make_task("crraft", 3, kl_max=kl_max, weight=0.8)
    batch = crraft_fixture(task, kl_fixture)
    samples, baselines = sequences(policy, reference, batch)
    # the fixture binds: the KL filter changes the choice in prompt 0 and skips prompt 2
    assert samples[0].rho > kl_max >= samples[1].rho
    assert baselines[1].rho <= kl_max < baselines[2].rho
    check(policy, reference, batch, [1, "baseline", None])
    # without the filter (KL_max = ∞) the method would train on sample 0 and on ā of prompt 2
    assert method_of(policy, reference, batch, kl_max=float("inf")).selection == [0, "baseline", "baseline"]


# ---------------------------------------------------------------- truncated responses


@pytest.mark.parametrize("on_truncation, codpo, crraft", [
    ("keep", [(0, 2), (0, 1)], [0, 0]),  # a cut response counts as finished
    ("violation", [(1, 0), (0, 1)], [1, 0]),  # infeasible: a⁻ candidate (lowest reward among the fails)
    ("mask", [(1, 2), (0, 2)], [1, 0]),  # out of the update: never a⁺, a⁻ or a*
])
def test_truncated_samples_follow_on_truncation(models, on_truncation, codpo, crraft):
    policy, reference = models
    verdicts = ["pass", "pass", "fail", "pass", "pass", "pass"]
    rewards = [2.0, 1.0, 3.0, 1.0, -1.0, 0.5]
    truncated = [True, False, False, False, True, False]
    for optimizer, selection in (("codpo", codpo), ("crraft", crraft), ("crpg", None)):
        task = make_task(optimizer, 3, kl_max=1e3, beta=0.3, lam=0.2, on_truncation=on_truncation)
        batch = make_batch(task, [PROMPT] * 2, responses(21, 6), rewards, verdicts, truncated, responses(22, 2),
                           [0.0, 0.5], [True, True])
        if selection is None:  # CRPG: the masked ones leave the batch mean, the others are all used
            selection = [1, 2, 3, 5] if on_truncation == "mask" else list(range(6))
        check(policy, reference, batch, selection)


# ---------------------------------------------------------------- the RM-only baseline, dropout


def test_the_unconstrained_baseline_is_reinforce_on_every_sample(models):
    policy, reference = models
    task = make_task("codpo", 3, kl_max=50.0)
    batch = make_batch(task, [PROMPT] * 2, responses(31, 6), [1.0, -1.0, 0.0, 2.0, 0.5, 0.1],
                       ["fail", "error", "fail", "fail", "fail", "fail"], [True, False, False, False, False, True],
                       responses(32, 2), [0.0, 0.0], [False, False])
    method = method_of(policy, reference, batch, unconstrained=True)
    assert method.selection == list(range(6))
    assert_same_gradient(trainer_grads(policy, reference, batch, unconstrained=True),
                         expected_grads(policy, batch, method.coefficients))


def test_the_update_runs_with_dropout_off(models):
    tokenizer = build_tokenizer()
    reference = models[1]
    policy = build_model(tokenizer, hidden_size=32, num_heads=2, seed=1)
    policy.load_state_dict(models[0].state_dict())
    for layer in policy.model.layers:
        layer.self_attn.attention_dropout = 0.5
    task = make_task("crpg", 3, kl_max=50.0, on_judge_error="violation")
    batch = make_batch(task, [PROMPT] * 3, responses(41, 9), REWARDS, VERDICTS, [False] * 9, responses(42, 3),
                       [0.1, -0.2, 0.3], [True] * 3)
    method = method_of(policy, reference, batch)  # dropout off (logprob puts the model in eval mode)
    want = expected_grads(policy, batch, method.coefficients)
    policy.train()  # as a training loop would leave it
    got = trainer_grads(policy, reference, batch)
    assert_same_gradient(got, want)
    assert policy.training  # the flag is restored
