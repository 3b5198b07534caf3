"""The three constrained optimizers' selection rules and losses (docs/method.md §4).

Each loss is a pure function of sequence-level tensors that returns a NamedTuple whose
first field ``loss`` is the scalar to backpropagate; the other fields are detached stats.
"""

from cgpo.trainer.losses.codpo import CODPOLoss, CODPOSelection, codpo_loss, codpo_select
from cgpo.trainer.losses.crpg import CRPGLoss, crpg_loss
from cgpo.trainer.losses.crraft import CRRAFTLoss, CRRAFTSelection, crraft_loss, crraft_select

__all__ = [
    "CODPOLoss",
    "CODPOSelection",
    "CRPGLoss",
    "CRRAFTLoss",
    "CRRAFTSelection",
    "codpo_loss",
    "codpo_select",
    "crpg_loss",
    "crraft_loss",
    "crraft_select",
]
