"""The judges served in this process, behind their own client.

The gateway app and its handler run in the caller's process and the client reaches them through
httpx's ASGI transport: the same validation and answers as over the network, with nothing to start.
It lives with the judges, not with the clients, so that the client layer never imports a service.
"""

from __future__ import annotations

from typing import Any

from cgpo.services.common.client import JudgesClient
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.judges.app import build_app
from cgpo.services.judges.config import JudgeConfig


def embedded_judges(config: JudgeConfig | None = None, settings: ServiceSettings | None = None,
                    **kwargs: Any) -> JudgesClient:
    """A client of judges running in this process (``config`` defaults to ``CGPO_JUDGES_*``); ``kwargs``
    go to `JudgesClient`. Never queued: an embedded app has no Redis, whatever ``CGPO_REDIS_URL`` says."""
    settings = settings or ServiceSettings.from_env(redis_url=None)
    return JudgesClient.for_app(build_app(settings, config or JudgeConfig.from_env()), **kwargs)
