"""docs/method.md §4 written out again, in plain Python, for the tests that check the method.

Given each sequence's log-probs, reward, verdicts and truncation, ``expected`` returns which samples an
optimizer selects and every sequence's coefficient g_i = ρ_l · ∂L/∂log π_w(a_i) (ρ_l the task weight),
computed from the formulas with loops over floats. Nothing here calls trainer/ (no selection helper, no
loss, no private function): a test that compares the trainer's parameter gradient with
Σ_i g_i ∇_w log π_w(a_i) checks the method, not the code against itself. Ties go to the lowest index,
as docs/method.md §4's masked arg-max/min do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@dataclass
class Seq:
    """One rollout or baseline as the method sees it."""

    logp: float
    ref_logp: float
    reward: float = 0.0
    verdicts: dict[str, str] = field(default_factory=dict)
    truncated: bool = False
    length: int = 1

    @property
    def rho(self) -> float:
        return self.logp - self.ref_logp


@dataclass
class Expected:
    coefficients: list[float]
    """(N + B) g_i for the N samples, then the B baselines."""
    selection: list[tuple[int, int] | int | str | None]
    """Per prompt: CODPO (a⁺, a⁻) as sample indices within the prompt; CRRAFT the index of a*, or
    "baseline"; None when the prompt is skipped. CRPG: the indices of the samples in the batch mean."""


def status(seq: Seq, on_judge_error: str, on_truncation: str) -> str:
    """"feasible", "infeasible" or "masked" (docs/method.md §2 [ours]: error is never a pass)."""
    errored = any(v == "error" for v in seq.verdicts.values())
    if errored and on_judge_error == "mask" or seq.truncated and on_truncation == "mask":
        return "masked"
    passed = all(v == "pass" for v in seq.verdicts.values())
    if seq.truncated and on_truncation == "violation":
        passed = False
    return "feasible" if passed else "infeasible"


def expected(optimizer: str, samples: list[Seq], baselines: list[Seq], baseline_rewards: list[float], k: int, *,
             kl_max: float = 10.0, beta: float = 0.1, lam: float = 0.0, weight: float = 1.0,
             on_judge_error: str = "mask", on_truncation: str = "violation",
             baseline_ok: list[bool] | None = None, unconstrained: bool = False) -> Expected:
    """The selection and coefficients of one task's update. ``baseline_ok``: ā passes every judge (and is
    usable under the truncation rule) — its KL filter ρ(ā) ≤ KL_max is applied here."""
    n, b = len(samples), len(baselines)
    assert n == b * k
    kinds = ["feasible" if unconstrained else status(s, on_judge_error, on_truncation) for s in samples]
    g = [0.0] * (n + b)
    if optimizer == "crpg" or unconstrained:
        used = [i for i in range(n) if kinds[i] != "masked"]
        clipped = {}
        for i in used:
            s = samples[i]
            calibrated = sigmoid(s.reward - baseline_rewards[i // k]) if kinds[i] == "feasible" else 0.0
            clipped[i] = max(1 - s.rho / kl_max, 0.0) * calibrated
        mean = sum(clipped.values()) / len(used) if used else 0.0
        for i in used:
            g[i] = -weight * (clipped[i] - mean) / len(used)
        return Expected(g, used)
    selection: list[tuple[int, int] | int | str | None] = []
    if optimizer == "codpo":
        pairs = []
        for p in range(b):
            idx = [p * k + j for j in range(k)]
            pos = [i for i in idx if kinds[i] == "feasible"]
            neg = [i for i in idx if kinds[i] == "infeasible"]
            pool = neg or [i for i in idx if kinds[i] != "masked"]
            if not pos:
                selection.append(None)
                continue
            chosen = max(pos, key=lambda i: (samples[i].reward, -i))
            rejected = min(pool, key=lambda i: (samples[i].reward, i))
            if chosen == rejected:
                selection.append(None)
                continue
            pairs.append((chosen, rejected))
            selection.append((chosen - p * k, rejected - p * k))
        for chosen, rejected in pairs:
            c, r = samples[chosen], samples[rejected]
            margin = c.rho - r.rho
            g[chosen] += weight * (-beta * sigmoid(-beta * margin) - lam / max(c.length, 1)) / len(pairs)
            g[rejected] += weight * beta * sigmoid(-beta * margin) / len(pairs)
        return Expected(g, selection)
    assert optimizer == "crraft"
    baseline_ok = baseline_ok or [False] * b
    targets = []
    for p in range(b):
        idx = [p * k + j for j in range(k)]
        kept = [i for i in idx if kinds[i] == "feasible" and samples[i].rho <= kl_max]
        if kept:
            best = max(kept, key=lambda i: (samples[i].reward, -i))
            targets.append((best, sigmoid(samples[best].reward - baseline_rewards[p])))
            selection.append(best - p * k)
        elif baseline_ok[p] and baselines[p].rho <= kl_max:
            targets.append((n + p, 0.5))
            selection.append("baseline")
        else:
            selection.append(None)
    for target, w in targets:
        g[target] += -weight * w / len(targets)
    return Expected(g, selection)
