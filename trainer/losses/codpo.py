"""CODPO — Constrained Online DPO (docs/method.md §4; Xu et al. 2024, arXiv 2409.20370).

Per prompt, one preference pair built from its K rollouts by the judges: the best feasible
sample is preferred to the worst infeasible one, then a DPO loss plus a length-normalised
NLL on the preferred sample. β, not a filter, keeps the policy near π_ref.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cgpo.trainer.losses.tensors import check_finite, check_shapes, masked_argmax, safe_mean


class CODPOSelection(NamedTuple):
    """What `codpo_select` returns; rows with ``valid`` False are skipped (their indices are 0)."""

    chosen_index: Tensor
    """(B,) long, a⁺: the feasible sample with the highest reward."""
    rejected_index: Tensor
    """(B,) long, a⁻: the infeasible sample with the lowest reward, else the lowest-reward sample."""
    valid: Tensor
    """(B,) bool: the prompt yields a pair of two distinct samples."""


class CODPOLoss(NamedTuple):
    """What `codpo_loss` returns. Only ``loss`` carries a gradient; the rest are (M,) stats."""

    loss: Tensor
    """() mean over the M pairs of preference_loss + nll_loss: backpropagate this."""
    margin: Tensor
    """(M,) Δ = [log π_w(a⁺) − log π_ref(a⁺)] − [log π_w(a⁻) − log π_ref(a⁻)]."""
    preference_loss: Tensor
    """(M,) −log σ(β·Δ)."""
    nll_loss: Tensor
    """(M,) −(λ/|a⁺|) · log π_w(a⁺), the NLL term as it enters the loss."""


def codpo_select(reward: Tensor, feasible: Tensor, include: Tensor | None = None) -> CODPOSelection:
    """Pick one (a⁺, a⁻) pair per prompt from its K samples (docs/method.md §4, CODPO).

    Only the included samples take part: a masked sample (``include`` False, e.g. a judge answered
    ``error``) is never a⁺ nor a⁻. a⁺ = argmax of r over the included feasible samples; a⁻ = argmin
    of r over the included infeasible samples, or over all included samples when every one of them is
    feasible. The arg-max/min run on rewards with the excluded samples set to ∓inf — never on
    reward × mask, which is wrong for negative rewards.

    A prompt is invalid (skipped) when no included sample is feasible, or when a⁺ and a⁻ would be the
    same sample: one included sample, or every included sample feasible with all their rewards tied —
    a pair of one sample carries no preference. Ties go to the lowest index (``torch.argmax``/``argmin``
    return the first extremum), so selection is deterministic.

    Args:
        reward: (B, K) raw reward-model scores; must be finite (a NaN would win the arg-max).
        feasible: (B, K) bool, every judge of the task passed the sample.
        include: (B, K) bool, the sample takes part in the selection (default: all do).
    """
    if reward.dim() != 2:
        raise ValueError(f"reward must be (B, K), got shape {tuple(reward.shape)}")
    include = torch.ones_like(feasible) if include is None else include
    check_shapes(tuple(reward.shape), feasible=feasible, include=include)
    check_finite(reward=reward)
    positive = feasible & include  # (B, K) candidates for a⁺
    negative = ~feasible & include  # (B, K) candidates for a⁻
    chosen = masked_argmax(reward, positive)  # (B,)
    worst_negative = masked_argmax(-reward, negative)  # (B,)
    worst = masked_argmax(-reward, include)  # (B,) fallback when every included sample is feasible
    rejected = torch.where(negative.any(dim=1), worst_negative, worst)  # (B,)
    valid = positive.any(dim=1) & (chosen != rejected)  # (B,)
    return CODPOSelection(torch.where(valid, chosen, 0), torch.where(valid, rejected, 0), valid)


def codpo_loss(
    logp_chosen: Tensor,
    ref_logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_logp_rejected: Tensor,
    chosen_len: Tensor,
    beta: float,
    lam: float,
) -> CODPOLoss:
    r"""The CODPO loss over the M valid prompts of one task (docs/method.md §4, CODPO).

    .. math::

        Δ_m &= [\log π_w(a^+_m) − \log π_{ref}(a^+_m)] − [\log π_w(a^-_m) − \log π_{ref}(a^-_m)] \\
        L   &= \tfrac1M \textstyle\sum_m \big[ −\log σ(β Δ_m) − \tfrac{λ}{|a^+_m|} \log π_w(a^+_m) \big]

    (the paper's update equation has the wrong sign; this is the coherent loss). Gradient
    descent raises log π_w(a⁺) and lowers log π_w(a⁻). ``log σ`` is ``F.logsigmoid``, stable
    for large |βΔ|. M = 0 gives ``sum(empty) / 1`` = 0: never NaN, and still attached to the
    inputs' graph when they require grad, so ``backward()`` runs and yields zero gradients.
    A zero ``chosen_len`` is treated as 1 (an empty response has log π = 0 anyway).

    Args:
        logp_chosen, logp_rejected: (M,) summed token log-probs of a⁺ / a⁻ under the policy, with grad.
        ref_logp_chosen, ref_logp_rejected: (M,) the same under π_ref (detached here regardless).
        chosen_len: (M,) |a⁺|, the number of response tokens of a⁺.
        beta: β > 0, the DPO temperature.
        lam: λ ≥ 0, the weight of the length-normalised NLL on a⁺.
    """
    check_shapes((logp_chosen.numel(),), logp_chosen=logp_chosen, ref_logp_chosen=ref_logp_chosen,
                  logp_rejected=logp_rejected, ref_logp_rejected=ref_logp_rejected, chosen_len=chosen_len)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    margin = (logp_chosen - ref_logp_chosen.detach()) - (logp_rejected - ref_logp_rejected.detach())  # (M,) Δ
    preference_loss = -F.logsigmoid(beta * margin)  # (M,)
    nll_loss = -(lam / chosen_len.clamp(min=1).to(logp_chosen.dtype)) * logp_chosen  # (M,)
    loss = safe_mean(preference_loss + nll_loss)  # () mean over the M pairs
    return CODPOLoss(loss, margin.detach(), preference_loss.detach(), nll_loss.detach())
