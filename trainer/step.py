"""One task's share of a CGPO step (docs/method.md §4–5): select, loss, and a micro-batched backward scaled by ρ_l.

The losses are pure functions of sequence-level log-probs, so the update runs in two passes:

1. without grad, log π_w and log π_ref of every sequence; the task's loss is evaluated on a leaf
   copy of log π_w and differentiated, giving g_i = ∂L/∂log π_w(a_i) for every sequence;
2. for the sequences with g_i ≠ 0 only, micro-batch by micro-batch, log π_w is recomputed with grad
   and backpropagated with weight ρ_l · g_i.

By the chain rule this is exactly ∇_w (ρ_l · L), with activation memory bounded by the micro-batch
(the pass-1 forward is also what ρ = log π_w − log π_ref needs). Both passes run with the policy in
eval mode (dropout off), so they evaluate one deterministic function. Gradients accumulate across tasks;
the caller takes one optimizer step (docs/method.md §5). Under data parallelism pass 1 runs on a rank's shard,
the sequence-level results are gathered so the loss (and g) is the whole batch's, and pass 2 runs on
the rank's own sequences (trainer/distributed.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from cgpo.trainer.config import TaskConfig
from cgpo.trainer.distributed import SINGLE, Dist
from cgpo.trainer.logprobs import eval_mode, sequence_logprobs
from cgpo.trainer.objectives import OPTIMIZERS, LossInputs
from cgpo.trainer.rollout import Rollouts
from cgpo.trainer.scoring import TaskScores


@dataclass
class TaskBatch:
    """What one task contributes to a step: B prompts, their N = B·K scored rollouts and baselines."""

    task: TaskConfig
    prompt_ids: list[list[int]]
    """(B) rendered prompt ids."""
    rollouts: Rollouts
    scores: TaskScores
    baseline_ids: list[list[int]]
    """(B) token ids of each prompt's baseline response ā."""
    baseline_feasible: list[bool]
    """(B) ā may stand in for CRRAFT: it passes every judge of the task (judged once per run) and was
    not cut at ``max_new_tokens`` (unless ``on_truncation: keep``); trainer/baselines.py."""


@dataclass
class Outcome:
    """The sequence-level facts a task's loss needs, for the step's whole batch (all ranks' shards)."""

    scores: TaskScores
    """(N) verdicts and rewards, prompt-major."""
    lengths: list[int]
    """(N) response lengths in tokens."""
    truncated: list[bool]
    """(N) the response was cut at ``max_new_tokens`` (no EOS drawn)."""
    baseline_feasible: list[bool]
    """(B) ā may stand in for CRRAFT (``TaskBatch.baseline_feasible``)."""


def sample_status(task: TaskConfig, scores: TaskScores, truncated: list[bool],
                  unconstrained: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(feasible, masked), both (N,) bool: each sample's y and whether the update ignores it.

    y = 1 iff every judge answered ``pass`` (an ``error`` is never a pass) and, with
    ``on_truncation: violation``, the response ended with EOS. A sample is masked — no a⁺, a⁻ or a*,
    not in CRPG's batch — when a judge answered ``error`` under ``on_judge_error: mask``, or when it
    was cut under ``on_truncation: mask``; a masked sample is never feasible. ``unconstrained`` (the
    RM-only baseline) ignores the judges and truncation: every sample is feasible and none is masked.
    """
    n = len(truncated)
    if unconstrained:
        return torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    passed = torch.tensor(scores.feasible, dtype=torch.bool)  # (N,)
    errored = torch.tensor(scores.errored, dtype=torch.bool)  # (N,)
    cut = torch.tensor(truncated, dtype=torch.bool)  # (N,)
    masked = (errored & (task.on_judge_error == "mask")) | (cut & (task.on_truncation == "mask"))
    feasible = passed & ~(cut & (task.on_truncation == "violation")) & ~masked
    return feasible, masked


def task_update(policy: Any, reference: Any, batch: TaskBatch, *, temperature: float, micro_batch_size: int,
                unconstrained: bool = False, dist: Dist = SINGLE) -> tuple[dict[str, float], dict[str, float]]:
    """Accumulate ∇(ρ_l · L_task) into ``policy``'s grads; return the task's metrics and the pass timings.

    Under data parallelism ``batch`` is this rank's shard: the loss is evaluated on the whole batch
    (gathered), the gradient of this rank's sequences is backpropagated here, and the caller sums the
    parameter gradients over the ranks. Metrics are the whole batch's, identical on every rank.
    """
    task, rollouts = batch.task, batch.rollouts
    prompts = [batch.prompt_ids[p] for p in rollouts.prompt_index] + batch.prompt_ids
    responses = list(rollouts.response_ids) + batch.baseline_ids  # samples, then the B baselines
    with eval_mode(policy):
        tic = time.perf_counter()
        lockstep = dist if dist.sharded else None
        with torch.no_grad():
            logp = sequence_logprobs(policy, prompts, responses, temperature, micro_batch_size,
                                     lockstep).logprobs.cpu()
            ref_logp = sequence_logprobs(reference, prompts, responses, temperature, micro_batch_size,
                                         lockstep).logprobs.cpu()
        logprobs_s = time.perf_counter() - tic
        outcome = Outcome(batch.scores, [len(r) for r in rollouts.response_ids],
                          [not f for f in rollouts.finished], list(batch.baseline_feasible))
        outcome, logp_all, ref_all, mine = _whole_batch(dist, outcome, logp, ref_logp)
        n = len(outcome.lengths)
        leaf = logp_all.clone().requires_grad_(True)
        loss, stats = _task_loss(task, leaf, ref_all, outcome, unconstrained)
        (task.weight * loss).backward()
        grad = leaf.grad.detach()[mine]  # this rank's sequences: ρ_l · ∂L/∂log π_w
        tic = time.perf_counter()
        _backward_through_policy(policy, (prompts, responses), grad, (temperature, micro_batch_size), lockstep)
        backward_s = time.perf_counter() - tic
    scores = outcome.scores
    feasible, masked = sample_status(task, scores, outcome.truncated)  # the task's rules, also when ignored
    metrics = {"loss": loss.item(), "kl": (logp_all - ref_all)[:n].mean().item(),
               "reward": _mean(scores.reward), "calibrated_reward": _mean(scores.calibrated),
               "feasible_rate": feasible.float().mean().item(), "masked_rate": masked.float().mean().item(),
               "error_rate": _mean([float(e) for e in scores.errored]),
               "truncated_rate": _mean([float(t) for t in outcome.truncated]),
               **spread(scores.reward, outcome.lengths, task.k, logp_all[:n]), **stats}
    for judge, rates in scores.judge_rates().items():
        metrics[f"judge/{judge}/pass_rate"] = rates["pass_rate"]
        metrics[f"judge/{judge}/error_rate"] = rates["error_rate"]
    return metrics, {"logprobs": logprobs_s, "backward": backward_s}


def _whole_batch(dist: Dist, outcome: Outcome, logp: torch.Tensor,
                 ref_logp: torch.Tensor) -> tuple[Outcome, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather every rank's shard into the whole batch's outcome and log-probs, laid out as one process
    would have them ([all samples, all baselines]), and the positions of this rank's sequences in it."""
    n = len(outcome.lengths)
    if not dist.enabled:
        return outcome, logp, ref_logp, torch.arange(len(logp))
    parts = dist.gather((outcome, logp[:n], logp[n:], ref_logp[:n], ref_logp[n:]))
    sizes = [(len(p[0].lengths), len(p[0].baseline_feasible)) for p in parts]
    total_n = sum(s for s, _ in sizes)
    sample_start = sum(s for s, _ in sizes[:dist.rank])
    baseline_start = total_n + sum(b for _, b in sizes[:dist.rank])
    mine = torch.cat([torch.arange(sample_start, sample_start + n),
                      torch.arange(baseline_start, baseline_start + len(outcome.baseline_feasible))])
    whole = Outcome(
        TaskScores.concat([p[0].scores for p in parts]), sum((p[0].lengths for p in parts), []),
        sum((p[0].truncated for p in parts), []), sum((p[0].baseline_feasible for p in parts), []))
    logp_all = torch.cat([p[1] for p in parts] + [p[2] for p in parts])
    ref_all = torch.cat([p[3] for p in parts] + [p[4] for p in parts])
    return whole, logp_all, ref_all, mine


def _task_loss(task: TaskConfig, leaf: torch.Tensor, ref_logp: torch.Tensor, outcome: Outcome,
               unconstrained: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The task's optimizer (the RM-only baseline: CRPG with every sample feasible) on the whole batch."""
    scores = outcome.scores
    feasible, masked = sample_status(task, scores, outcome.truncated, unconstrained)  # (N,), (N,)
    inputs = LossInputs(task, leaf, ref_logp, reward=torch.tensor(scores.reward, dtype=torch.float32),
                        baseline_reward=torch.tensor(scores.baseline_reward, dtype=torch.float32),
                        feasible=feasible, include=~masked, lengths=outcome.lengths,
                        baseline_feasible=torch.tensor(outcome.baseline_feasible, dtype=torch.bool))
    return OPTIMIZERS["crpg" if unconstrained else task.optimizer](inputs)


def _backward_through_policy(policy: Any, pairs: tuple[list[list[int]], list[list[int]]], grad: torch.Tensor,
                             passes: tuple[float, int], lockstep: Any = None) -> None:
    """Backpropagate Σ_i grad_i · log π_w(a_i) one micro-batch at a time, skipping sequences with grad 0;
    ``pairs`` are the (prompts, responses), ``passes`` the (temperature, micro-batch size). In lockstep
    (a sharded policy) every rank runs as many backward passes as the rank with the most, the others
    adding zero-weight ones."""
    (prompts, responses), (temperature, micro_batch_size) = pairs, passes
    active = grad.nonzero().squeeze(-1).tolist()
    starts = range(0, len(active), micro_batch_size)
    stand_ins = lockstep.max_int(len(starts)) - len(starts) if lockstep is not None else 0  # agreed first
    for start in starts:
        idx = active[start : start + micro_batch_size]
        logp = sequence_logprobs(policy, [prompts[i] for i in idx], [responses[i] for i in idx], temperature,
                                 micro_batch_size).logprobs
        torch.autograd.backward(logp, grad[idx].to(logp.device))
    for _ in range(stand_ins):
        logp = sequence_logprobs(policy, [[0]], [[0]], temperature, 1).logprobs  # a stand-in, weight 0
        torch.autograd.backward(logp, torch.zeros_like(logp))


def spread(rewards: list[float], lengths: list[int], k: int, logp: torch.Tensor) -> dict[str, float]:
    """How the batch's samples spread: response length (mean, min, max, in tokens), reward standard
    deviation, the share of prompts whose K samples all got one reward (no signal to tell them apart:
    GRPO-style normalisation would give them zero advantage), and the policy's entropy per response token
    at the sampling temperature, estimated by the sampled tokens' mean −log π (Σ −log π(a) / Σ |a|)."""
    tokens = sum(lengths)
    groups = [rewards[i:i + k] for i in range(0, len(rewards), k)]
    mean = _mean(rewards)
    return {"response_tokens": _mean([float(x) for x in lengths]),
            "response_tokens_min": float(min(lengths, default=0)),
            "response_tokens_max": float(max(lengths, default=0)),
            "reward_std": (_mean([(r - mean) ** 2 for r in rewards])) ** 0.5,
            "same_reward_prompts": _mean([float(len(set(g)) == 1) for g in groups if g]),
            "entropy": -float(logp.sum()) / tokens if tokens else 0.0}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
