"""Small handlers (and a gateway around them) for testing the queue, worker and gateway without any model."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict

from cgpo.services.common.backends import GatewayBackend, LocalBackend, QueueBackend
from cgpo.services.common.batching import BatchPolicy
from cgpo.services.common.gateway import create_app, submit
from cgpo.services.common.schemas import Request as RequestBody
from cgpo.services.common.settings import ServiceSettings


class EchoItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    sleep_s: float = 0.0
    crash: bool = False
    emit: str | None = None
    surrogate: bool = False
    """Answer text with a lone surrogate appended (invalid in JSON text; a handler bug to survive)."""


class EchoOutput(BaseModel):
    text: str
    batch_size: int


class EchoRequest(RequestBody):
    items: list[EchoItem]


class EchoResponse(BaseModel):
    outputs: list[EchoOutput]


class EchoHandler:
    """Upper-cases text (or answers ``emit`` verbatim); records every batch it ran and the deadline it was
    given; can sleep or raise on request."""

    item_type = EchoItem

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.deadlines: list[float | None] = []
        self.setups = 0
        self.lock = threading.Lock()

    def setup(self) -> None:
        self.setups += 1

    def predict(self, batch: Sequence[EchoItem], deadline: float | None = None) -> list[EchoOutput]:
        with self.lock:
            self.batches.append([i.text for i in batch])
            self.deadlines.append(deadline)
        time.sleep(max((i.sleep_s for i in batch), default=0.0))
        if any(i.crash for i in batch):
            raise RuntimeError("crash requested")
        return [EchoOutput(text=(i.emit if i.emit is not None else i.text.upper()) + ("\ud800" if i.surrogate else ""),
                           batch_size=len(batch)) for i in batch]


SERVICE = "echo"
router = APIRouter()


@router.post("/v1/echo", response_model=EchoResponse)
async def echo(body: EchoRequest, request: Request) -> EchoResponse:
    outputs = await submit(request, [i.model_dump(mode="json") for i in body.items])
    return EchoResponse(outputs=[EchoOutput.model_validate(o) for o in outputs])


def echo_app(settings: ServiceSettings, handler: EchoHandler | None = None,
             backend: GatewayBackend | None = None) -> FastAPI:
    """A gateway with one route, ``POST /v1/echo``, over the embedded handler or the Redis queue."""
    if backend is None:
        backend = (QueueBackend(settings, SERVICE) if settings.redis_url else
                   LocalBackend(handler or EchoHandler(), BatchPolicy(settings.batch_max_items,
                                                                      settings.batch_max_wait_ms)))
    app = create_app(SERVICE, backend, settings, title="echo", description="test service")
    app.include_router(router)
    return app
