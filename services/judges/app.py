"""The judges' HTTP gateway: ``POST /v1/judge`` and ``GET /v1/judges``.

Routes validate, submit and map errors; the judging happens in the backend —
this process's handler (embedded default, no ``CGPO_REDIS_URL``) or the Redis
queue's workers.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import Counter

from cgpo.services.common.backends import GatewayBackend, LocalBackend, QueueBackend
from cgpo.services.common.batching import BatchPolicy
from cgpo.services.common.errors import UnknownJudgeError
from cgpo.services.common.gateway import create_app, document_choices, submit
from cgpo.services.common.schemas import ErrorEnvelope, JudgeList, JudgeRequest, JudgeResponse, JudgeResult
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.handler import JudgeHandler
from cgpo.services.judges.registry import build, describe

SERVICE = "judges"
router = APIRouter(prefix="/v1", tags=["judges"])


@router.post("/judge", response_model=JudgeResponse,
             responses={400: {"model": ErrorEnvelope}, 413: {"model": ErrorEnvelope}})
async def judge(body: JudgeRequest, request: Request) -> JudgeResponse:
    """Judge each item with its judges; `feasible` is true iff every one of them passed.

    Send `X-Request-ID` to make retries safe (a repeated id is judged once) and
    `X-Timeout-S` to shorten the deadline.
    """
    known: dict[str, object] = request.app.state.judges
    unknown = sorted({name for item in body.items for name in item.judges} - known.keys())
    if unknown:
        raise UnknownJudgeError(f"unknown judge(s) {unknown}; this service has {sorted(known)}",
                                {"unknown": unknown, "known": sorted(known)})
    outputs = await submit(request, [item.model_dump(mode="json") for item in body.items])
    results = [JudgeResult.model_validate(o) for o in outputs]
    counter = request.app.state.verdicts
    for result in results:
        for name, verdict in result.verdicts.items():
            counter.labels(name, verdict.verdict).inc()
    return JudgeResponse(results=results)


@router.get("/judges", response_model=JudgeList)
async def judges(request: Request) -> JudgeList:
    """Every judge this service runs, with the metadata fields it reads."""
    return JudgeList(judges=list(request.app.state.judges.values()))


def make_backend(settings: ServiceSettings, config: JudgeConfig) -> GatewayBackend:
    if settings.redis_url:
        return QueueBackend(settings, SERVICE)
    policy = BatchPolicy(settings.batch_max_items, settings.batch_max_wait_ms)
    return LocalBackend(JudgeHandler(build(config)), policy, max_queue=settings.max_queue)


def build_app(settings: ServiceSettings | None = None, config: JudgeConfig | None = None,
              backend: GatewayBackend | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    config = config or JudgeConfig.from_env()
    app = create_app(SERVICE, backend or make_backend(settings, config), settings,
                     title="CGPO Mixture-of-Judges service",
                     description="Rule and LLM judges for constrained RLHF (CGPO, arXiv 2409.20370): "
                                 "math, code, instruction following, refusal, and LLM classifiers.")
    app.state.judges = {info.name: info for info in describe(config)}
    document_choices(app, "JudgeItem", "judges", sorted(app.state.judges), array=True)
    app.state.verdicts = Counter("cgpo_judge_verdicts", "Verdicts answered, per judge", ["judge", "verdict"],
                                 registry=app.state.metrics.registry)
    app.include_router(router)
    return app
