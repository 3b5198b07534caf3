"""Reward models served in this process, behind their own client.

The gateway app and its handler run in the caller's process and the client reaches them through
httpx's ASGI transport: the same validation and answers as over the network, with nothing to start.
It lives with the reward-model service, not with the clients, so that the client layer never imports
a service.
"""

from __future__ import annotations

from typing import Any

from cgpo.services.common.client import RewardClient
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.rm.app import build_app
from cgpo.services.rm.config import RMConfig


def embedded_reward_models(models: dict[str, str], settings: ServiceSettings | None = None,
                           **kwargs: Any) -> RewardClient:
    """A client of reward models running in this process: ``models`` maps names to paths; the other
    options come from ``CGPO_RM_*``, and ``kwargs`` go to `RewardClient`. Never queued: an embedded app
    has no Redis, whatever ``CGPO_REDIS_URL`` says."""
    settings = settings or ServiceSettings.from_env(redis_url=None)
    config = RMConfig.from_env(models=tuple(f"{name}={path}" for name, path in models.items()))
    return RewardClient.for_app(build_app(settings, config), **kwargs)
