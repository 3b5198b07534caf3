"""CRRAFT — Calibrated-Regularized Reward-Ranking Fine-Tuning (docs/method.md §4; Xu et al. 2024, arXiv 2409.20370).

Per prompt, the best rollout that passes every judge and stays within KL_max of π_ref is
fine-tuned on, weighted by its calibrated reward; when none qualifies the prompt's baseline
response stands in (if it is itself feasible). Only positives are used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cgpo.trainer.losses.tensors import check_finite, check_shapes, masked_argmax, safe_mean


class CRRAFTSelection(NamedTuple):
    """What `crraft_select` returns; rows with ``valid`` False are skipped (index 0, weight 0)."""

    index: Tensor
    """(B,) long, a*: the kept sample with the highest reward (0 where use_baseline or not valid)."""
    use_baseline: Tensor
    """(B,) bool: nothing was kept, so train on the baseline ā instead of a sample."""
    weight: Tensor
    """(B,) w = σ(r(a*) − r(ā)); 0.5 (= R_calib of ā itself) when use_baseline; 0 when not valid."""
    valid: Tensor
    """(B,) bool: the prompt has a sample or a baseline to train on."""


class CRRAFTLoss(NamedTuple):
    """What `crraft_loss` returns. Only ``loss`` carries a gradient; the rest are (M,) stats."""

    loss: Tensor
    """() mean over the M prompts of nll_loss: backpropagate this."""
    nll_loss: Tensor
    """(M,) −w · log π_w(a*), the NLL term as it enters the loss."""


def crraft_select(
    reward: Tensor,
    baseline_reward: Tensor,
    feasible: Tensor,
    log_ratio: Tensor,
    kl_max: float,
    baseline_feasible: Tensor,
    include: Tensor | None = None,
) -> CRRAFTSelection:
    """Pick at most one response per prompt to fine-tune on (docs/method.md §4, CRRAFT).

    Kept samples: included, y = 1 and ρ ≤ KL_max (inclusive); a masked sample (``include`` False,
    e.g. a judge answered ``error``) is never kept. a* = argmax of r over the kept samples,
    set to −inf elsewhere (never reward × mask: rewards can be negative); ties go to the lowest
    index. w = σ(r(a*) − r(ā)). If nothing is kept and ``baseline_feasible``, train on ā with
    w = 0.5 (its own calibrated reward); otherwise the prompt is invalid.

    Args:
        reward: (B, K) raw reward-model scores; must be finite (a NaN would win the arg-max).
        baseline_reward: (B,) r(s, ā) of each prompt's baseline; must be finite.
        feasible: (B, K) bool, every judge of the task passed the sample.
        log_ratio: (B, K) ρ = log π_w − log π_ref per sample, no grad; NaN counts as over KL_max.
        kl_max: KL_max > 0 (``inf`` disables the filter).
        baseline_feasible: (B,) bool, ā passes every judge and its ρ(ā) ≤ KL_max [ours].
        include: (B, K) bool, the sample takes part in the selection (default: all do).
    """
    if reward.dim() != 2:
        raise ValueError(f"reward must be (B, K), got shape {tuple(reward.shape)}")
    include = torch.ones_like(feasible) if include is None else include
    check_shapes(tuple(reward.shape), feasible=feasible, log_ratio=log_ratio, include=include)
    check_shapes(tuple(reward.shape[:1]), baseline_reward=baseline_reward, baseline_feasible=baseline_feasible)
    check_finite(reward=reward, baseline_reward=baseline_reward)
    if not kl_max > 0:
        raise ValueError(f"kl_max must be > 0, got {kl_max}")
    kept = feasible & include & (log_ratio.detach() <= kl_max)  # (B, K)
    has_kept = kept.any(dim=1)  # (B,)
    best = masked_argmax(reward, kept)  # (B,)
    best_reward = reward.gather(1, best.unsqueeze(1)).squeeze(1)  # (B,)
    use_baseline = ~has_kept & baseline_feasible  # (B,)
    valid = has_kept | baseline_feasible  # (B,)
    weight = torch.where(has_kept, torch.sigmoid(best_reward - baseline_reward), 0.5)  # (B,)
    weight = torch.where(valid, weight, 0.0).detach()  # (B,)
    return CRRAFTSelection(torch.where(has_kept, best, 0), use_baseline, weight, valid)


def crraft_loss(logp: Tensor, weight: Tensor) -> CRRAFTLoss:
    r"""The CRRAFT loss over the M valid prompts of one task (docs/method.md §4, CRRAFT).

    .. math::

        L = −\tfrac1M \textstyle\sum_m w_m · \log π_w(a^*_m)

    a weighted NLL: ∂L/∂log π_w(a*_m) = −w_m / M < 0, so descent raises the selected responses.
    ``weight`` is a constant (detached here regardless). M = 0 gives ``sum(empty) / 1`` = 0:
    never NaN, and still attached to the inputs' graph when they require grad.

    Args:
        logp: (M,) summed token log-probs of a* (or ā) under the policy, with grad.
        weight: (M,) w from `crraft_select`.
    """
    check_shapes((logp.numel(),), logp=logp, weight=weight)
    nll_loss = -weight.detach() * logp  # (M,)
    loss = safe_mean(nll_loss)  # () mean over the M prompts
    return CRRAFTLoss(loss, nll_loss.detach())
