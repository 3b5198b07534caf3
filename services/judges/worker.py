"""``cgpo judges worker``: serve the judges queue from this process."""

from __future__ import annotations

from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import Worker, configure_logging
from cgpo.services.judges.app import SERVICE
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.handler import JudgeHandler
from cgpo.services.judges.registry import build


def run_worker(settings: ServiceSettings | None = None, config: JudgeConfig | None = None, *,
               burst: bool = False) -> None:
    settings = settings or ServiceSettings.from_env()
    if not settings.redis_url:
        raise SystemExit("cgpo judges worker needs CGPO_REDIS_URL (the queue to serve)")
    handler = JudgeHandler(build(config or JudgeConfig.from_env()))
    configure_logging()
    try:
        Worker(handler, settings, SERVICE).run(burst=burst)
    finally:
        handler.close()
