"""Judges and reward models served in this process, for code that knows the services only by their clients.

The trainer talks to the services through `JudgesClient` and `RewardClient` and nothing else of theirs
(the import contracts in pyproject.toml hold it to that). A run whose tasks name no service URL still
needs the services built in its own process; this module is the one place that does it for such
callers, taking only what they have (judge names, reward-model paths) and handing back clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cgpo.services.common.client import JudgesClient, RewardClient


def judges(names: Sequence[str], **kwargs: Any) -> JudgesClient:
    """A client of the judges ``names`` (every other judge setting at its default) in this process."""
    from cgpo.services.judges.config import JudgeConfig
    from cgpo.services.judges.embedded import embedded_judges

    return embedded_judges(JudgeConfig(enabled=tuple(names)), **kwargs)


def reward_models(models: Mapping[str, str], **kwargs: Any) -> RewardClient:
    """A client of the reward models ``models`` (name -> path) in this process."""
    from cgpo.services.rm.embedded import embedded_reward_models

    return embedded_reward_models(dict(models), **kwargs)
