"""Where a gateway sends a request's items: a Redis queue, or the handler in this process.

Both backends answer ``run(job_id, items, timeout_s) -> outputs`` and raise the
typed errors of `cgpo.services.common.errors`, so routes never know which one they
talk to. Both are idempotent by job id: a retried request id is run once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from cgpo.services.common.batching import BatchPolicy, Pending
from cgpo.services.common.errors import ConflictError, DeadlineExceededError, JobFailedError, QueueFullError
from cgpo.services.common.keys import Keys
from cgpo.services.common.queue import GatewayQueue, digest
from cgpo.services.common.schemas import JobResult, QueueJob
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import Handler, expired_result, run_batch

Outputs = list[dict[str, Any]]


class GatewayBackend(Protocol):
    """Where a gateway's routes send their items (not to be confused with the LLM judges' model backends)."""

    mode: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, job_id: str, items: list[dict[str, Any]], timeout_s: float) -> Outputs: ...

    async def health(self) -> dict[str, Any]:
        """Readiness detail; raises ServiceUnavailableError when not ready."""
        ...


def outputs_of(result: JobResult) -> Outputs:
    """A job's outputs, or the typed error it was answered with: a deadline stays a deadline (504), any
    other error a worker stored is the job's failure (500)."""
    error = result.error
    if error is not None:
        if DeadlineExceededError.matches(error.code):
            raise DeadlineExceededError(error.message)
        raise JobFailedError(error.message, error.detail)
    return result.outputs or []


class QueueBackend:
    """Enqueue on Redis; workers (anywhere) run the jobs."""

    mode = "queue"

    def __init__(self, settings: ServiceSettings, service: str) -> None:
        if not settings.redis_url:
            raise ValueError("the queue backend needs a Redis URL (CGPO_REDIS_URL)")
        self.queue = GatewayQueue(settings.redis_url, Keys(settings.queue or service),
                                  max_queue=settings.max_queue, result_ttl_s=settings.result_ttl_s)

    async def start(self) -> None:
        await self.queue.start()

    async def close(self) -> None:
        await self.queue.close()

    async def run(self, job_id: str, items: list[dict[str, Any]], timeout_s: float) -> Outputs:
        await self.queue.submit(QueueJob(id=job_id, items=items, deadline=time.time() + timeout_s))
        result = await self.queue.wait(job_id, timeout_s)
        if result is None:
            raise DeadlineExceededError(f"no worker answered within {timeout_s:.1f}s")
        return outputs_of(result)

    async def health(self) -> dict[str, Any]:
        return {"queue_depth": await self.queue.depth(), "workers": await self.queue.live_workers(),
                "late_results": await self.queue.late_results()}


class LocalBackend:
    """Run the handler in this process, batching concurrent requests (the embedded default).

    Requests wait in an asyncio queue; one dispatcher forms batches with the same
    policy as the Redis workers and runs them on a single worker thread, so model
    work never blocks the event loop.
    """

    mode = "embedded"

    def __init__(self, handler: Handler, policy: BatchPolicy, *, max_queue: int = 10_000,
                 keep_results: int = 4096) -> None:
        self.handler = handler
        self.policy = policy
        self.max_queue = max_queue
        self.keep_results = keep_results
        self._pending: list[Pending[tuple[str, list[dict[str, Any]]]]] = []
        self._futures: dict[str, tuple[str, asyncio.Future[JobResult]]] = {}  # job id -> (digest, future)
        self._done: OrderedDict[str, tuple[str, JobResult]] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handler")
        self._dispatcher: asyncio.Task[None] | None = None
        self._setup: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if self._setup is None:
            loop = asyncio.get_running_loop()
            self._setup = loop.run_in_executor(self._executor, self.handler.setup)
            self._dispatcher = asyncio.create_task(self._dispatch())
        await self._setup

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self._executor.shutdown(wait=True)
        close = getattr(self.handler, "close", None)
        if close is not None:
            close()

    async def run(self, job_id: str, items: list[dict[str, Any]], timeout_s: float) -> Outputs:
        await self.start()
        key = digest(items)
        seen = self._done.get(job_id) or self._futures.get(job_id)
        if seen is not None and seen[0] != key:
            raise ConflictError()
        if job_id in self._done:
            return outputs_of(self._done[job_id][1])
        future = seen[1] if seen is not None else None
        if future is None:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"the embedded queue is full ({self.max_queue} jobs); retry later")
            future = asyncio.get_running_loop().create_future()
            self._futures[job_id] = (key, future)
            now = time.time()
            self._pending.append(Pending((job_id, items), len(items), now, now + timeout_s))
            self._wakeup.set()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError as exc:
            raise DeadlineExceededError(f"not answered within {timeout_s:.1f}s") from exc
        return outputs_of(result)

    async def health(self) -> dict[str, Any]:
        return {"queue_depth": len(self._pending), "ready": bool(self._setup and self._setup.done())}

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            while (left := self.policy.wait_left_s(self._pending, time.time())) > 0:
                await asyncio.sleep(left)
            selection = self.policy.select(self._pending, time.time())
            self._pending = selection.rest
            for p in selection.expired:
                self._finish(expired_result(p.job[0]))
            if selection.batch:
                jobs = [p.job for p in selection.batch]
                deadline = max(p.deadline_s for p in selection.batch)
                results = await loop.run_in_executor(self._executor, run_batch, self.handler, jobs, deadline)
                for result in results:
                    self._finish(result)

    def _finish(self, result: JobResult) -> None:
        key, future = self._futures.pop(result.id)
        self._done[result.id] = (key, result)
        while len(self._done) > self.keep_results:
            self._done.popitem(last=False)
        if not future.done():
            future.set_result(result)
