"""Invariants of the CGPO selection rules and losses (docs/method.md §4): masking, gradient signs,
edge cases, hand-computed 2-sample cases, and seeded random property checks."""

from __future__ import annotations

import math

import pytest
import torch

from cgpo.trainer.losses import codpo_loss, codpo_select, crpg_loss, crraft_loss, crraft_select


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values, **kwargs) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, **kwargs)


def random_batches(n: int = 200):
    """Seeded (B, K) rewards with ties and negative values, and random feasibility masks."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        b, k = (int(x) for x in torch.randint(1, 7, (2,), generator=gen))
        # rounding makes ties common; the shift makes some rows all-negative
        reward = (torch.randn(b, k, generator=gen, dtype=torch.float64) * 2).round()
        reward = reward - 3 * torch.rand(b, 1, generator=gen, dtype=torch.float64)
        feasible = torch.rand(b, k, generator=gen) < torch.rand(b, 1, generator=gen)
        yield gen, reward, feasible


# ---------------------------------------------------------------- CRPG


def test_crpg_hand_computed_two_samples():
    # ρ = [0, 0.5], KL_max = 1 → clip factors [1, 0.5]; R_calib = [σ(1), σ(0)=0.5]
    logp = t(-1.0, -2.0, requires_grad=True)
    out = crpg_loss(logp, t(-1.0, -2.5), t(1.0, 0.0), t(0.0, 0.0), torch.tensor([True, True]), kl_max=1.0)
    clipped = [sigmoid(1), 0.25]
    a0 = (clipped[0] - clipped[1]) / 2  # A = [a0, -a0]
    torch.testing.assert_close(out.log_ratio, t(0.0, 0.5))
    torch.testing.assert_close(out.clipped_reward, t(*clipped))
    torch.testing.assert_close(out.advantage, t(a0, -a0))
    # loss = -(a0·(-1) + (-a0)·(-2)) / 2 = -a0/2
    assert out.loss.item() == pytest.approx(-a0 / 2)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, t(-a0 / 2, a0 / 2))  # ∂L/∂logp_i = -A_i / N


def test_crpg_never_raises_an_infeasible_likelihood():
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        logp = (-10 * torch.rand(n, generator=gen, dtype=torch.float64)).requires_grad_()
        ref_logp = logp.detach() - 4 * torch.randn(n, generator=gen, dtype=torch.float64)
        reward = 3 * torch.randn(n, generator=gen, dtype=torch.float64) - 2
        feasible = torch.rand(n, generator=gen) < 0.5
        out = crpg_loss(logp, ref_logp, reward, torch.zeros(n, dtype=torch.float64), feasible, kl_max=2.0)
        out.loss.backward()
        assert (logp.grad[~feasible] >= 0).all()  # descent never raises an infeasible sample
        if (out.clipped_reward > 0).any():
            assert (logp.grad[~feasible] > 0).all() and (out.advantage[~feasible] < 0).all()
        assert out.advantage.sum().abs() < 1e-12  # batch-mean baseline


def test_crpg_kl_clip_zeroes_the_reward_at_and_beyond_kl_max():
    logp = t(-1.0, -1.0, -1.0, -1.0)
    ref_logp = logp - t(3.0, 5.0, 1.5, -3.0)  # ρ = KL_max, beyond, half, negative
    out = crpg_loss(logp, ref_logp, t(4.0, 4.0, 4.0, 4.0), t(0.0, 0.0, 0.0, 0.0), torch.ones(4, dtype=torch.bool), 3.0)
    calibrated = sigmoid(4.0)
    torch.testing.assert_close(out.clipped_reward, t(0.0, 0.0, calibrated / 2, 2 * calibrated))


def test_crpg_all_infeasible_does_nothing():
    logp = t(-1.0, -5.0, -2.0, requires_grad=True)
    infeasible = torch.zeros(3, dtype=torch.bool)
    out = crpg_loss(logp, t(-3.0, -1.0, -2.0), t(5.0, -1.0, 2.0), t(0.0, 0.0, 0.0), infeasible, kl_max=1.0)
    assert torch.equal(out.advantage, torch.zeros(3, dtype=torch.float64))
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(3, dtype=torch.float64))


def test_crpg_all_feasible_at_the_reference_is_the_unconstrained_policy_gradient():
    gen = torch.Generator().manual_seed(2)
    logp = (-20 * torch.rand(6, generator=gen, dtype=torch.float64)).requires_grad_()
    reward, baseline = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    out = crpg_loss(logp, logp.detach(), reward, baseline, torch.ones(6, dtype=torch.bool), kl_max=0.5)

    plain = logp.detach().clone().requires_grad_()
    calibrated = torch.sigmoid(reward - baseline)
    expected = -((calibrated - calibrated.mean()) * plain).mean()  # REINFORCE, batch-mean baseline
    expected.backward()
    out.loss.backward()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(logp.grad, plain.grad)


def test_crpg_log_ratio_carries_no_gradient():
    logp = t(-1.0, -2.0, -3.0, requires_grad=True)
    ref_logp = t(-1.5, -1.0, -3.2, requires_grad=True)
    out = crpg_loss(logp, ref_logp, t(1.0, 2.0, 0.0), t(0.0, 0.0, 0.0), torch.tensor([True, True, False]), 1.0)
    out.loss.backward()
    # ρ depends on logp, but the gradient is exactly -A/N: no path through the clip factor
    torch.testing.assert_close(logp.grad, -out.advantage / 3)
    assert ref_logp.grad is None
    assert not any(x.requires_grad for x in (out.advantage, out.clipped_reward, out.log_ratio))


def test_crpg_rejects_bad_inputs():
    ok = dict(logp=t(-1.0, -2.0), ref_logp=t(-1.0, -2.0), reward=t(0.0, 1.0), baseline_reward=t(0.0, 0.0),
              feasible=torch.tensor([True, False]), kl_max=1.0)
    with pytest.raises(ValueError):
        crpg_loss(**{**ok, "kl_max": 0.0})
    with pytest.raises(ValueError):
        crpg_loss(**{**ok, "reward": t(0.0, 1.0, 2.0)})
    with pytest.raises(ValueError):
        crpg_loss(**{**ok, "reward": t(0.0, math.nan)})
    with pytest.raises(TypeError):
        crpg_loss(**{**ok, "feasible": t(1.0, 0.0)})


# ---------------------------------------------------------------- CODPO select


def test_codpo_select_masks_with_inf_not_by_multiplying():
    reward = t([-3.0, -1.0, -2.0], [1.0, 2.0, 3.0])
    feasible = torch.tensor([[True, False, False], [True, False, True]])
    # reward × mask would pick the infeasible -1 (→ 0) as chosen in row 0,
    # and the feasible 1 (vs the infeasible 2 → 0) as rejected in row 1
    sel = codpo_select(reward, feasible)
    assert sel.chosen_index.tolist() == [0, 2]
    assert sel.rejected_index.tolist() == [2, 1]
    assert sel.valid.tolist() == [True, True]


def test_codpo_select_edge_cases():
    reward = t([5.0, 1.0, 3.0], [-1.0, -4.0, -2.0], [2.0, 2.0, 2.0], [1.0, 1.0, 0.0])
    feasible = torch.tensor([[False] * 3, [True] * 3, [True] * 3, [True, True, False]])
    sel = codpo_select(reward, feasible)
    assert sel.valid.tolist() == [False, True, False, True]  # no feasible; ok; all tied → one sample
    assert sel.chosen_index[1] == 0 and sel.rejected_index[1] == 1  # all feasible → lowest as rejected
    assert sel.chosen_index[3] == 0  # tie → lowest index
    for reward_k1, feasible_k1 in ((t([1.0]), torch.tensor([[True]])), (t([1.0]), torch.tensor([[False]]))):
        assert not codpo_select(reward_k1, feasible_k1).valid.item()  # K = 1 never makes a pair


def test_codpo_select_ties_break_to_the_lowest_index():
    sel = codpo_select(t([0.0, 7.0, 7.0, -2.0, -2.0]), torch.tensor([[False, True, True, False, False]]))
    assert (sel.chosen_index.item(), sel.rejected_index.item()) == (1, 3)


def test_codpo_select_rules_hold_on_random_batches():
    for _, reward, feasible in random_batches():
        sel = codpo_select(reward, feasible)
        for row in range(reward.shape[0]):
            r, f = reward[row], feasible[row]
            distinct = (~f).any() or r.max() > r.min()
            assert sel.valid[row] == (f.any() and distinct)
            if not sel.valid[row]:
                assert sel.chosen_index[row] == 0 and sel.rejected_index[row] == 0
                continue
            c, j = int(sel.chosen_index[row]), int(sel.rejected_index[row])
            assert f[c] and r[c] == r[f].max()
            assert c == int(torch.nonzero(f & (r == r[f].max()))[0])  # lowest index among ties
            pool = ~f if (~f).any() else torch.ones_like(f)
            assert pool[j] and r[j] == r[pool].min()
            assert j == int(torch.nonzero(pool & (r == r[pool].min()))[0])


def test_codpo_select_rejects_non_finite_rewards():
    with pytest.raises(ValueError):
        codpo_select(t([math.nan, 1.0]), torch.tensor([[True, False]]))


# ---------------------------------------------------------------- CODPO loss


def test_codpo_loss_hand_computed():
    logp_c = t(-2.0, -1.0, requires_grad=True)
    logp_r = t(-4.0, -1.5, requires_grad=True)
    # Δ = [(-2+3) - (-4+3), (-1+1) - (-1.5+2)] = [2, -0.5]
    out = codpo_loss(logp_c, t(-3.0, -1.0), logp_r, t(-3.0, -2.0), torch.tensor([4, 2]), beta=0.5, lam=0.2)
    torch.testing.assert_close(out.margin, t(2.0, -0.5))
    expected = [-math.log(sigmoid(1.0)) + 0.2 / 4 * 2.0, -math.log(sigmoid(-0.25)) + 0.2 / 2 * 1.0]
    assert out.loss.item() == pytest.approx(sum(expected) / 2)
    out.loss.backward()
    # ∂/∂logp_c = (-β σ(-βΔ) - λ/|a⁺|) / M,  ∂/∂logp_r = β σ(-βΔ) / M
    torch.testing.assert_close(logp_c.grad, t(-0.5 * sigmoid(-1.0) - 0.05, -0.5 * sigmoid(0.25) - 0.1) / 2)
    torch.testing.assert_close(logp_r.grad, t(0.5 * sigmoid(-1.0), 0.5 * sigmoid(0.25)) / 2)


def test_codpo_loss_raises_chosen_and_lowers_rejected():
    gen = torch.Generator().manual_seed(3)
    logp_c, ref_c, logp_r, ref_r = (-30 * torch.rand(16, generator=gen, dtype=torch.float64) for _ in range(4))
    for x in (logp_c, logp_r, ref_c):
        x.requires_grad_()
    for lam in (0.0, 1.0):
        logp_c.grad = logp_r.grad = None
        out = codpo_loss(logp_c, ref_c, logp_r, ref_r, torch.randint(1, 50, (16,), generator=gen), 0.1, lam)
        out.loss.backward()
        assert (logp_c.grad < 0).all() and (logp_r.grad > 0).all()
    assert ref_c.grad is None


def test_codpo_nll_term_scales_with_one_over_chosen_length():
    args = (t(-6.0, -6.0), t(-5.0, -5.0), t(-9.0, -9.0), t(-7.0, -7.0))
    without = codpo_loss(*args, torch.tensor([3, 6]), beta=0.3, lam=0.0)
    with_nll = codpo_loss(*args, torch.tensor([3, 6]), beta=0.3, lam=0.6)
    torch.testing.assert_close(with_nll.preference_loss, without.preference_loss)
    torch.testing.assert_close(with_nll.nll_loss, t(0.6 / 3 * 6, 0.6 / 6 * 6))  # -(λ/|a⁺|)·logp
    assert with_nll.nll_loss[0] == pytest.approx(2 * with_nll.nll_loss[1])  # twice the length, half the term


def test_codpo_loss_with_no_pairs_is_zero_not_nan():
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    out = codpo_loss(empty, empty.detach(), empty, empty.detach(), torch.zeros(0, dtype=torch.long), 0.1, 1.0)
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss)
    out.loss.backward()  # still in the graph: a multi-task sum can backpropagate through it
    assert empty.grad.shape == (0,)


# ---------------------------------------------------------------- CRRAFT select


def test_crraft_select_keeps_feasible_samples_within_kl_max():
    reward = t([3.0, 2.0, 1.0, 0.0], [-1.0, -5.0, -3.0, 9.0])
    feasible = torch.tensor([[False, True, True, True], [False, True, True, False]])
    log_ratio = t([0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0])  # row 0: sample 1 is past KL_max, 2 is on it
    sel = crraft_select(reward, t(0.5, -4.0), feasible, log_ratio, 1.0, torch.tensor([True, True]))
    assert sel.index.tolist() == [2, 2]  # ρ = KL_max is kept; row 1: -3 beats -5 (reward × mask would say 0)
    assert sel.use_baseline.tolist() == [False, False] and sel.valid.tolist() == [True, True]
    torch.testing.assert_close(sel.weight, t(sigmoid(1.0 - 0.5), sigmoid(-3.0 + 4.0)))


def test_crraft_select_falls_back_to_a_feasible_baseline_or_skips():
    reward = t([4.0, 2.0], [4.0, 2.0], [1.0, 1.0])
    feasible = torch.tensor([[False, True], [False, True], [True, True]])
    log_ratio = t([0.0, 9.0], [0.0, 9.0], [0.0, 0.0])  # rows 0-1 keep nothing
    sel = crraft_select(reward, t(0.0, 0.0, 0.0), feasible, log_ratio, 2.0, torch.tensor([True, False, False]))
    assert sel.use_baseline.tolist() == [True, False, False]
    assert sel.valid.tolist() == [True, False, True]
    assert sel.index[2] == 0  # tie → lowest index
    torch.testing.assert_close(sel.weight, t(0.5, 0.0, sigmoid(1.0)))


def test_crraft_select_rules_hold_on_random_batches():
    for gen, reward, feasible in random_batches():
        b, k = reward.shape
        log_ratio = 4 * torch.randn(b, k, generator=gen, dtype=torch.float64)
        baseline_reward = torch.randn(b, generator=gen, dtype=torch.float64)
        baseline_feasible = torch.rand(b, generator=gen) < 0.5
        sel = crraft_select(reward, baseline_reward, feasible, log_ratio, 2.0, baseline_feasible)
        for row in range(b):
            kept = feasible[row] & (log_ratio[row] <= 2.0)
            assert sel.valid[row] == (kept.any() or baseline_feasible[row])
            assert sel.use_baseline[row] == (not kept.any() and baseline_feasible[row])
            if kept.any():
                i, best = int(sel.index[row]), reward[row][kept].max()
                assert kept[i] and reward[row, i] == best
                assert i == int(torch.nonzero(kept & (reward[row] == best))[0])
                torch.testing.assert_close(sel.weight[row], torch.sigmoid(best - baseline_reward[row]))
            else:
                assert sel.weight[row] == (0.5 if baseline_feasible[row] else 0.0)


# ---------------------------------------------------------------- CRRAFT loss


def test_crraft_loss_is_a_weighted_nll_that_raises_the_selected():
    logp = t(-2.0, -10.0, -4.0, requires_grad=True)
    weight = t(0.9, 0.5, 0.1)
    out = crraft_loss(logp, weight)
    assert out.loss.item() == pytest.approx((0.9 * 2 + 0.5 * 10 + 0.1 * 4) / 3)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, -weight / 3)
    assert (logp.grad < 0).all()


def test_crraft_loss_with_no_prompts_is_zero_not_nan():
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    out = crraft_loss(empty, torch.zeros(0, dtype=torch.float64))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert empty.grad.shape == (0,)


# ---------------------------------------------------------------- masked samples (include = False)


def test_excluded_samples_take_no_part_in_either_selection():
    for gen, reward, feasible in random_batches():
        b, k = reward.shape
        include = torch.rand(b, k, generator=gen) < 0.7
        sel = codpo_select(reward, feasible, include)
        for row in range(b):
            r, pos, neg = reward[row], feasible[row] & include[row], ~feasible[row] & include[row]
            pool = neg if neg.any() else include[row]
            if not pos.any():
                assert not sel.valid[row]
                continue
            chosen = min(i for i in range(k) if pos[i] and r[i] == r[pos].max())  # ties: lowest index
            rejected = min(i for i in range(k) if pool[i] and r[i] == r[pool].min())
            assert bool(sel.valid[row]) == (chosen != rejected)
            if sel.valid[row]:
                assert (int(sel.chosen_index[row]), int(sel.rejected_index[row])) == (chosen, rejected)
        log_ratio = torch.zeros(b, k, dtype=torch.float64)
        kept = crraft_select(reward, torch.zeros(b, dtype=torch.float64), feasible, log_ratio, 1.0,
                             torch.zeros(b, dtype=torch.bool), include)
        for row in range(b):
            pos = feasible[row] & include[row]
            assert kept.valid[row] == pos.any()
            if pos.any():
                assert pos[kept.index[row]] and reward[row, kept.index[row]] == reward[row][pos].max()


def test_pass_pass_error_is_a_pair_of_the_two_passes():
    sel = codpo_select(t([1.0, 0.2, -0.5]), torch.tensor([[True, True, False]]), torch.tensor([[True, True, False]]))
    assert (sel.chosen_index.item(), sel.rejected_index.item(), sel.valid.item()) == (0, 1, True)
