"""One task's share of a CGPO step (SPEC §4–5): select, loss, and a micro-batched backward scaled by ρ_l.

The losses are pure functions of sequence-level log-probs, so the update runs in two passes:

1. without grad, log π_w and log π_ref of every sequence; the task's loss is evaluated on a leaf
   copy of log π_w and differentiated, giving g_i = ∂L/∂log π_w(a_i) for every sequence;
2. for the sequences with g_i ≠ 0 only, micro-batch by micro-batch, log π_w is recomputed with grad
   and backpropagated with weight ρ_l · g_i.

By the chain rule this is exactly ∇_w (ρ_l · L), with activation memory bounded by the micro-batch
(the pass-1 forward is also what ρ = log π_w − log π_ref needs). Gradients accumulate across tasks;
the caller takes one optimizer step (SPEC §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import TaskConfig
from trainer.logprobs import sequence_logprobs
from trainer.losses import codpo_loss, codpo_select, crpg_loss, crraft_loss, crraft_select
from trainer.rollout import Rollouts
from trainer.scoring import TaskScores


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
    """(B) ā passes every judge of the task (judged once per run)."""


def task_update(policy: Any, reference: Any, batch: TaskBatch, *, temperature: float, micro_batch_size: int,
                unconstrained: bool = False) -> dict[str, float]:
    """Accumulate ∇(ρ_l · L_task) into ``policy``'s grads; return the task's metrics for this step."""
    task, rollouts = batch.task, batch.rollouts
    n = len(rollouts)
    prompts = [batch.prompt_ids[p] for p in rollouts.prompt_index] + batch.prompt_ids
    responses = list(rollouts.response_ids) + batch.baseline_ids  # samples, then the B baselines
    with torch.no_grad():
        logp = sequence_logprobs(policy, prompts, responses, temperature, micro_batch_size).logprobs
        ref_logp = sequence_logprobs(reference, prompts, responses, temperature, micro_batch_size).logprobs
    leaf = logp.clone().requires_grad_(True)
    loss, stats = _task_loss(task, leaf, ref_logp, batch, n, unconstrained)
    (task.weight * loss).backward()
    grad = leaf.grad.detach()  # (N + B,) ρ_l · ∂L/∂log π_w
    _backward_through_policy(policy, prompts, responses, grad, temperature, micro_batch_size)
    log_ratio = (logp - ref_logp)[:n]
    scores = batch.scores
    metrics = {"loss": loss.item(), "kl": log_ratio.mean().item(),
               "reward": _mean(scores.reward), "calibrated_reward": _mean(scores.calibrated),
               "feasible_rate": _mean([float(f) for f in scores.feasible]),
               "error_rate": _mean([float(e) for e in scores.errored]),
               "response_tokens": _mean([float(len(r)) for r in rollouts.response_ids]), **stats}
    for judge, rates in scores.judge_rates().items():
        metrics[f"judge/{judge}/pass_rate"] = rates["pass_rate"]
        metrics[f"judge/{judge}/error_rate"] = rates["error_rate"]
    return metrics


def _task_loss(task: TaskConfig, leaf: torch.Tensor, ref_logp: torch.Tensor, batch: TaskBatch, n: int,
               unconstrained: bool) -> tuple[torch.Tensor, dict[str, float]]:
    scores, k = batch.scores, task.k
    reward = torch.tensor(scores.reward, dtype=torch.float32)  # (N,)
    baseline_reward = torch.tensor(scores.baseline_reward, dtype=torch.float32)  # (N,)
    errored = torch.tensor(scores.errored)  # (N,)
    feasible = torch.ones(n, dtype=torch.bool) if unconstrained else torch.tensor(scores.feasible)
    masked = errored & (task.on_judge_error == "mask") & (not unconstrained)  # samples the update ignores
    if task.optimizer == "crpg" or unconstrained:
        keep = (~masked).nonzero().squeeze(-1)
        out = crpg_loss(leaf[keep], ref_logp[keep], reward[keep], baseline_reward[keep], feasible[keep],
                        task.kl_max)
        return out.loss, {"clipped_reward": _mean(out.clipped_reward.tolist()), "used_fraction": len(keep) / n}
    b = n // k
    rows = torch.arange(b)
    if task.optimizer == "codpo":
        # A masked sample is never chosen (infeasible) nor the lowest reward (above every real one).
        above = reward.max().item() + 1.0
        sel = codpo_select(reward.masked_fill(masked, above).view(b, k), (feasible & ~masked).view(b, k))
        valid = sel.valid & ~masked.view(b, k)[rows, sel.rejected_index]
        chosen = (rows * k + sel.chosen_index)[valid]
        rejected = (rows * k + sel.rejected_index)[valid]
        lengths = torch.tensor([max(len(batch.rollouts.response_ids[i]), 1) for i in chosen.tolist()],
                               dtype=torch.float32)
        out = codpo_loss(leaf[chosen], ref_logp[chosen], leaf[rejected], ref_logp[rejected], lengths,
                         task.beta, task.lam)
        return out.loss, {"used_fraction": valid.float().mean().item(), "margin": _mean(out.margin.tolist())}
    log_ratio = (leaf.detach() - ref_logp)  # (N + B,)
    baseline_ok = torch.tensor(batch.baseline_feasible) & (log_ratio[n:] <= task.kl_max)
    sel = crraft_select(reward.view(b, k), baseline_reward.view(b, k)[:, 0], (feasible & ~masked).view(b, k),
                        log_ratio[:n].view(b, k), task.kl_max, baseline_ok)
    target = torch.where(sel.use_baseline, n + rows, rows * k + sel.index)[sel.valid]
    out = crraft_loss(leaf[target], sel.weight[sel.valid])
    return out.loss, {"used_fraction": sel.valid.float().mean().item(),
                      "baseline_fraction": sel.use_baseline.float().mean().item()}


def _backward_through_policy(policy: Any, prompts: list[list[int]], responses: list[list[int]], grad: torch.Tensor,
                             temperature: float, micro_batch_size: int) -> None:
    """Backpropagate Σ_i grad_i · log π_w(a_i) one micro-batch at a time, skipping sequences with grad 0."""
    active = grad.nonzero().squeeze(-1).tolist()
    for start in range(0, len(active), micro_batch_size):
        idx = active[start : start + micro_batch_size]
        logp = sequence_logprobs(policy, [prompts[i] for i in idx], [responses[i] for i in idx], temperature,
                                 micro_batch_size).logprobs
        torch.autograd.backward(logp, grad[idx].to(logp.device))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
