"""``cgpo rm worker``: serve the reward-model queue from this process."""

from __future__ import annotations

from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import Worker, configure_logging
from cgpo.services.rm.app import SERVICE, make_cache
from cgpo.services.rm.config import RMConfig
from cgpo.services.rm.handler import RMHandler


def run_worker(settings: ServiceSettings | None = None, config: RMConfig | None = None, *,
               burst: bool = False) -> None:
    settings = settings or ServiceSettings.from_env()
    config = config or RMConfig.from_env()
    if not settings.redis_url:
        raise SystemExit("cgpo rm worker needs CGPO_REDIS_URL (the queue to serve)")
    if not config.models:
        raise SystemExit("cgpo rm worker needs --model NAME=PATH (or CGPO_RM_MODELS)")
    configure_logging()
    handler = RMHandler.from_config(config, make_cache(settings, config))
    Worker(handler, settings, SERVICE).run(burst=burst)
