"""CRPG — Calibrated-Regularized Policy Gradient (docs/method.md §4; Xu et al. 2024, arXiv 2409.20370).

A REINFORCE step on the calibrated reward of feasible samples, clipped linearly by the
sequence log-ratio and centred by the batch mean. Infeasible samples score 0, so whenever
some feasible sample scores above 0 their advantage is negative and their likelihood goes down.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cgpo.trainer.losses.tensors import check_finite, check_shapes, safe_mean


class CRPGLoss(NamedTuple):
    """What `crpg_loss` returns. Only ``loss`` carries a gradient; the rest are (N,) stats."""

    loss: Tensor
    """() −mean(A · log π_w): backpropagate this."""
    advantage: Tensor
    """(N,) A = R̃_cr − mean(R̃_cr)."""
    clipped_reward: Tensor
    """(N,) R̃_cr = max(1 − ρ/KL_max, 0) · y · σ(r − r̄)."""
    log_ratio: Tensor
    """(N,) ρ = log π_w − log π_ref per sequence; its mean estimates KL(π_w ‖ π_ref)."""


def crpg_loss(
    logp: Tensor,
    ref_logp: Tensor,
    reward: Tensor,
    baseline_reward: Tensor,
    feasible: Tensor,
    kl_max: float,
) -> CRPGLoss:
    r"""The CRPG loss over N = B·K samples of one task (docs/method.md §4, CRPG).

    .. math::

        ρ_i        &= \operatorname{sg}[\log π_w(a_i) − \log π_{ref}(a_i)]      \\
        R_i        &= y_i · σ(r_i − \bar r_i)                                  \\
        \tilde R_i &= \max(1 − ρ_i / KL_{max},\ 0) · R_i                        \\
        A_i        &= \tilde R_i − \tfrac1N \textstyle\sum_j \tilde R_j           \\
        L          &= −\tfrac1N \textstyle\sum_i A_i · \log π_w(a_i)

    ``sg`` is stop-gradient: ρ and A are constants, so ∂L/∂log π_w(a_i) = −A_i / N.
    The clip factor is not capped above: a sample with ρ < 0 gets a factor > 1, as in the paper.
    If no sample is feasible every R̃ is 0, so every A is 0 and the step does nothing.
    N = 0 gives a loss of 0 (never NaN). Samples whose verdict is ``error`` must be dropped
    by the caller: ``feasible`` is a strict pass/fail.

    Args:
        logp: (N,) summed token log-probs under the policy, with grad.
        ref_logp: (N,) the same under π_ref (detached here regardless).
        reward: (N,) raw reward-model scores r(s, a).
        baseline_reward: (N,) r(s, ā) of each sample's prompt baseline.
        feasible: (N,) bool, y: every judge of the task passed the sample.
        kl_max: KL_max > 0, the log-ratio at which the reward is clipped to 0.
    """
    check_shapes((logp.numel(),), logp=logp, ref_logp=ref_logp, reward=reward,
                  baseline_reward=baseline_reward, feasible=feasible)
    check_finite(reward=reward, baseline_reward=baseline_reward)
    if not kl_max > 0:
        raise ValueError(f"kl_max must be > 0, got {kl_max}")
    log_ratio = logp.detach() - ref_logp.detach()  # (N,) ρ, no gradient (docs/method.md §4)
    calibrated = torch.sigmoid(reward.detach() - baseline_reward.detach())  # (N,) in (0, 1)
    constrained = torch.where(feasible, calibrated, 0.0)  # (N,) y · R_calib
    clipped_reward = (1 - log_ratio / kl_max).clamp(min=0) * constrained  # (N,) R̃_cr
    advantage = clipped_reward - safe_mean(clipped_reward)  # (N,) batch-mean baseline
    loss = safe_mean(-advantage * logp)  # () mean over all N samples
    return CRPGLoss(loss, advantage, clipped_reward, log_ratio)
