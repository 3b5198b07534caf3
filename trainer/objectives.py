"""The three constrained optimizers behind one interface (docs/method.md §4).

Each optimizer is a function of one task's whole batch, as ``LossInputs``, that selects the samples it
trains on and returns the task's loss and its statistics; ``OPTIMIZERS`` maps a task's ``optimizer``
name to it, so the step never branches on the name. The selection rules and losses themselves are the
pure functions of ``trainer/losses``; this module only lays a batch out for them. A new optimizer is a
function with this signature and one entry in ``OPTIMIZERS`` (and its name in the run config's allowed
values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cgpo.trainer.config import TaskConfig
from cgpo.trainer.losses import codpo_loss, codpo_select, crpg_loss, crraft_loss, crraft_select


@dataclass(frozen=True)
class LossInputs:
    """One task's batch as the optimizers see it: N = B·K samples (prompt-major), then the B baselines."""

    task: TaskConfig
    logp: torch.Tensor
    """(N + B,) log π_w of every sequence; the leaf the loss is differentiated against."""
    ref_logp: torch.Tensor
    """(N + B,) log π_ref of every sequence."""
    reward: torch.Tensor
    """(N,) raw reward r(s, a)."""
    baseline_reward: torch.Tensor
    """(N,) r(s, ā) of each sample's prompt."""
    feasible: torch.Tensor
    """(N,) bool: y, the sample passed every judge (and the truncation rule)."""
    include: torch.Tensor
    """(N,) bool: the sample is not masked; masked samples are in no pair, selection or average."""
    lengths: list[int]
    """(N) response lengths in tokens."""
    baseline_feasible: torch.Tensor
    """(B,) bool: ā may stand in for CRRAFT."""

    @property
    def n(self) -> int:
        return len(self.lengths)

    @property
    def rows(self) -> torch.Tensor:
        """(B,) prompt indices."""
        return torch.arange(self.n // self.task.k)

    def grid(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) → (B, K): sample j of prompt i at [i, j]."""
        return values[: self.n].view(-1, self.task.k)


Objective = Callable[[LossInputs], tuple[torch.Tensor, dict[str, float]]]
"""select + loss for one task: (the scalar loss, its detached statistics)."""


def crpg(x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """CRPG over every sample the update sees."""
    keep = x.include.nonzero().squeeze(-1)
    out = crpg_loss(x.logp[keep], x.ref_logp[keep], x.reward[keep], x.baseline_reward[keep], x.feasible[keep],
                    x.task.kl_max)
    return out.loss, {"clipped_reward": _mean(out.clipped_reward.tolist()), "used_fraction": len(keep) / x.n}


def codpo(x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """CODPO on each prompt's (a⁺, a⁻) pair, for the prompts that have one."""
    k, rows = x.task.k, x.rows
    sel = codpo_select(x.grid(x.reward), x.grid(x.feasible), x.grid(x.include))
    chosen = (rows * k + sel.chosen_index)[sel.valid]
    rejected = (rows * k + sel.rejected_index)[sel.valid]
    lengths = torch.tensor([max(x.lengths[i], 1) for i in chosen.tolist()], dtype=torch.float32)
    out = codpo_loss(x.logp[chosen], x.ref_logp[chosen], x.logp[rejected], x.ref_logp[rejected], lengths,
                     x.task.beta, x.task.lam)
    return out.loss, {"used_fraction": sel.valid.float().mean().item(), "margin": _mean(out.margin.tolist())}


def crraft(x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """CRRAFT on each prompt's selected a* (a sample, or the baseline ā when no sample qualifies)."""
    k, n, rows, kl_max = x.task.k, x.n, x.rows, x.task.kl_max
    log_ratio = x.logp.detach() - x.ref_logp  # (N + B,)
    baseline_ok = x.baseline_feasible & (log_ratio[n:] <= kl_max)
    sel = crraft_select(x.grid(x.reward), x.grid(x.baseline_reward)[:, 0], x.grid(x.feasible), x.grid(log_ratio),
                        kl_max, baseline_ok, x.grid(x.include))
    target = torch.where(sel.use_baseline, n + rows, rows * k + sel.index)[sel.valid]
    out = crraft_loss(x.logp[target], sel.weight[sel.valid])
    return out.loss, {"used_fraction": sel.valid.float().mean().item(),
                      "baseline_fraction": sel.use_baseline.float().mean().item()}


OPTIMIZERS: dict[str, Objective] = {"crpg": crpg, "codpo": codpo, "crraft": crraft}
"""A task's ``optimizer`` name → its objective. The RM-only baseline (``unconstrained_baseline``) trains
every task with ``crpg`` and every sample feasible."""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
