"""The reward-model HTTP gateway: ``POST /v1/score``, ``GET /v1/models`` and OpenRLHF's ``POST /get_reward``.

Scoring happens in the backend: this process's handler (embedded default, no
``CGPO_REDIS_URL``) or the Redis queue's workers.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request

from cgpo.services.common.backends import GatewayBackend, LocalBackend, QueueBackend
from cgpo.services.common.batching import BatchPolicy
from cgpo.services.common.errors import BadRequestError, ServiceUnavailableError, UnknownModelError, error_of
from cgpo.services.common.gateway import create_app, submit
from cgpo.services.common.keys import Keys
from cgpo.services.common.schemas import (
    ErrorEnvelope,
    ModelInfo,
    ModelList,
    RewardAnswer,
    RewardQuery,
    RMItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
)
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.rm.calibration import BaselineCache, MemoryCache, RedisCache
from cgpo.services.rm.config import RMConfig
from cgpo.services.rm.handler import RMHandler

SERVICE = "rm"
router = APIRouter(tags=["reward models"])


@router.post("/v1/score", response_model=ScoreResponse,
             responses={404: {"model": ErrorEnvelope}, 413: {"model": ErrorEnvelope}})
async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Raw reward of each (prompt, response); with a `baseline`, also r(s, ā) and σ(r(s, a) − r(s, ā))."""
    _check_model(request, body.model)
    items = [RMItem(model=body.model, prompt=i.prompt, response=i.response, baseline=i.baseline, messages=i.messages)
             for i in body.items]
    outputs = await submit(request, [i.model_dump(mode="json") for i in items])
    return ScoreResponse(results=[ScoreResult.model_validate(o) for o in outputs])


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    """The reward models this service scores with."""
    return ModelList(models=request.app.state.model_info())


@router.post("/get_reward", response_model=RewardAnswer, responses={400: {"model": ErrorEnvelope}})
async def get_reward(body: RewardQuery, request: Request, model: str | None = None) -> RewardAnswer:
    """OpenRLHF's remote reward-model protocol (`--remote_rm_url http://host:port/get_reward`).

    Scores each full text with the first configured model (or `?model=NAME`). When `prompts` are
    given, only their part of a too-long text is truncated.
    """
    name = model or request.app.state.default_model
    _check_model(request, name)
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise BadRequestError(f"prompts has {len(body.prompts)} entries for {len(body.query)} queries")
    prompts = body.prompts or [""] * len(body.query)
    items = [RMItem(model=name, prompt=p, text=q) for q, p in zip(body.query, prompts, strict=True)]
    outputs = [ScoreResult.model_validate(o) for o in await submit(request, [i.model_dump() for i in items])]
    failed = next((o.error for o in outputs if o.error is not None), None)
    if failed is not None:  # the protocol has one reward per text and no way to say that one is missing
        raise error_of(failed.code, failed.message, failed.detail)
    rewards = [o.reward for o in outputs]
    return RewardAnswer(rewards=rewards, scores=rewards,
                        extra_logs={"truncated": [float(o.truncated) for o in outputs]})


def _check_model(request: Request, name: str | None) -> None:
    known = request.app.state.model_names
    if name not in known:
        raise UnknownModelError(f"unknown reward model {name!r}; this service has {known}",
                                {"unknown": name, "known": known})


def make_cache(settings: ServiceSettings, config: RMConfig) -> BaselineCache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, Keys(settings.queue or SERVICE).baseline_prefix, config.baseline_ttl_s)
    return MemoryCache(config.cache_entries)


def build_app(settings: ServiceSettings | None = None, config: RMConfig | None = None,
              backend: GatewayBackend | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    config = config or RMConfig.from_env()
    if not config.models:
        raise ValueError("no reward model configured: pass --model NAME=PATH (or set CGPO_RM_MODELS)")
    handler = None
    if backend is None and not settings.redis_url:
        handler = RMHandler.from_config(config, make_cache(settings, config))
        backend = LocalBackend(handler, BatchPolicy(settings.batch_max_items, settings.batch_max_wait_ms),
                               max_queue=settings.max_queue)
    backend = backend or QueueBackend(settings, SERVICE)
    app = create_app(SERVICE, backend, settings, title="CGPO reward-model service",
                     description="Batched Bradley-Terry reward scoring with baseline-calibrated rewards "
                                 "(CGPO, arXiv 2409.20370), and OpenRLHF's remote reward-model protocol.")
    names = list(config.named_paths)
    app.state.model_names, app.state.default_model = names, names[0]

    def model_info() -> list[ModelInfo]:
        if handler is not None:  # embedded: the loaded models know their device and dtype
            if not all(m.loaded for m in handler.models.values()):
                raise ServiceUnavailableError("reward models are still loading")
            return [ModelInfo(**{k: v for k, v in m.describe().items() if k != "path"})
                    for m in handler.models.values()]
        return [ModelInfo(name=n, max_length=config.max_length, dtype=config.dtype or "auto",
                          device=config.device or "auto") for n in names]

    app.state.model_info = model_info
    app.include_router(router)
    return app
