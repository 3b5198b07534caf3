"""The worker loop: claim a batch from Redis, run the handler, store results.

A handler is small (LitServe's shape): ``setup()`` once, then
``predict(batch) -> outputs`` with exactly one output per input, in order.
Jobs are whole requests; the worker flattens the items of the jobs it claimed
into one batch, runs it, and splits the outputs back per job. A batch that
raises fails each of its jobs with an error; it never kills the worker.
Jobs delivered more than once (their first worker died) run alone, so one
poison job cannot take its neighbours down with it again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from cgpo.services.common.batching import BatchPolicy, Pending
from cgpo.services.common.errors import DeadlineExceededError, JobFailedError
from cgpo.services.common.keys import Keys
from cgpo.services.common.queue import REDIS_ERRORS, Claimed, WorkerQueue
from cgpo.services.common.schemas import JobResult, scrub_text
from cgpo.services.common.settings import ServiceSettings

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What a worker runs. ``item_type`` validates each queued item."""

    item_type: type[BaseModel]

    def setup(self) -> None: ...

    def predict(self, batch: Sequence[Any], deadline: float | None = None) -> Sequence[BaseModel]:
        """One output per item, in order. ``deadline`` (Unix time) is when the last job of the batch
        stops waiting: work still running then is wasted, and a handler should stop it."""
        ...


Jobs = Sequence[tuple[str, list[dict[str, Any]]]]


def run_batch(handler: Handler, jobs: Jobs, deadline: float | None = None) -> list[JobResult]:
    """Run the jobs' items as one batch; one JobResult per job, in order. Never raises.

    A job whose items do not validate fails alone. When the batch raises, each of its jobs is
    run again on its own, so a poison job fails alone and its batch-mates are answered. Outputs
    are made writable as JSON (lone surrogates replaced) before they leave the worker.
    """
    results: dict[int, JobResult] = {}
    parsed: dict[int, list[Any]] = {}
    for i, (job_id, items) in enumerate(jobs):
        try:
            parsed[i] = [handler.item_type.model_validate(item) for item in items]
        except Exception as exc:  # noqa: BLE001 - a malformed job answers an error, the others run
            results[i] = _failed(job_id, f"invalid items: {exc}")
    runnable = list(parsed)
    try:
        results |= _predict(handler, jobs, parsed, runnable, deadline)
    except Exception:  # noqa: BLE001 - find the job that broke the batch by running each alone
        if len(runnable) == 1:
            log.exception("job %s failed", jobs[runnable[0]][0])
        for i in runnable:
            try:
                results |= _predict(handler, jobs, parsed, [i], deadline)
            except Exception as exc:  # noqa: BLE001 - this job's error; the worker lives on
                log.exception("job %s failed", jobs[i][0])
                results[i] = _failed(jobs[i][0], f"the worker could not run this job: {exc!r}")
    return [results[i] for i in range(len(jobs))]


def _predict(handler: Handler, jobs: Jobs, parsed: dict[int, list[Any]], which: list[int],
             deadline: float | None) -> dict[int, JobResult]:
    flat = [item for i in which for item in parsed[i]]
    if not flat:
        return {i: JobResult(id=jobs[i][0], outputs=[]) for i in which}
    outputs = list(handler.predict(flat, deadline=deadline))
    if len(outputs) != len(flat):
        raise RuntimeError(f"handler returned {len(outputs)} outputs for {len(flat)} items")
    results, start = {}, 0
    for i in which:
        chunk = outputs[start : start + len(parsed[i])]
        start += len(parsed[i])
        results[i] = JobResult(id=jobs[i][0], outputs=[scrub_text(o.model_dump(mode="json")) for o in chunk])
    return results


def _failed(job_id: str, message: str) -> JobResult:
    return JobResult.failed(job_id, JobFailedError(scrub_text(message)))


def expired_result(job_id: str) -> JobResult:
    return JobResult.failed(job_id, DeadlineExceededError("the job's deadline passed before a worker ran it"))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """The logging of a worker process (``cgpo judges worker``, ``cgpo rm worker``), set up here once
    for every service: a gateway logs through uvicorn's configuration instead."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


class Worker:
    """Claims batches for one service queue and answers them, until stopped."""

    def __init__(self, handler: Handler, settings: ServiceSettings, service: str, *,
                 consumer: str | None = None) -> None:
        self.handler = handler
        self.settings = settings
        self.keys = Keys(settings.queue or service)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.policy = BatchPolicy(settings.batch_max_items, settings.batch_max_wait_ms)
        self.queue = WorkerQueue(settings.redis_url or "", self.keys, self.consumer,
                                 visibility_timeout_s=settings.visibility_timeout_s,
                                 max_attempts=settings.max_attempts, result_ttl_s=settings.result_ttl_s)
        self._stop = threading.Event()
        self._buffer: list[Pending[Claimed]] = []
        self.jobs_done = 0

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self, *, burst: bool = False) -> None:
        """Serve until stopped (SIGTERM/SIGINT), or, with ``burst``, until the queue is empty."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.handler.setup()
        backoff_s = 0.1
        log.info("worker %s serving queue %s", self.consumer, self.keys.stream)
        while not self._stop.is_set():
            try:
                self.queue.ensure_group()
                self.queue.heartbeat(self.settings.visibility_timeout_s)
                worked = self.step(block_ms=100 if burst else 1000)
                backoff_s = 0.1
                if burst and not worked and not self._buffer:
                    return
            except REDIS_ERRORS as exc:
                log.warning("Redis unreachable (%s); retrying in %.1fs", exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    def step(self, block_ms: int) -> bool:
        """Claim what is there, wait briefly to fill a batch, run it. True if anything ran."""
        self._fill(block_ms)
        if not self._buffer:
            return False
        while (left := self.policy.wait_left_s(self._buffer, time.time())) > 0:
            # Poll rather than BLOCK: Redis checks blocking timeouts only every 100 ms.
            if not self._fill(0):
                time.sleep(min(left, 0.0005))
        solo = next((p for p in self._buffer if p.job.attempt > 1), None)
        if solo is not None:  # a redelivered job runs alone (it may be what killed a worker)
            self._buffer.remove(solo)
            if solo.deadline_s <= time.time():  # nobody waits for it any more
                self.queue.complete(solo.job, expired_result(solo.job.job.id))
            else:
                self._run([solo])
            return True
        selection = self.policy.select(self._buffer, time.time())
        self._buffer = selection.rest
        for p in selection.expired:
            self.queue.complete(p.job, expired_result(p.job.job.id))
        if selection.batch:
            self._run(selection.batch)
        return True

    def _fill(self, block_ms: int) -> bool:
        room = self.policy.max_items - sum(p.items for p in self._buffer)
        if room <= 0:
            return False
        claimed = self.queue.claim(room, block_ms)
        for c in claimed:
            # wall-clock time: deadlines travel between hosts
            self._buffer.append(Pending(c, len(c.job.items), time.time(), c.job.deadline))
        return bool(claimed)

    def _run(self, batch: list[Pending[Claimed]]) -> None:
        claimed = [p.job for p in batch]
        with _Heartbeat(self.queue, [c.entry_id for c in claimed], self.settings.visibility_timeout_s / 3):
            results = run_batch(self.handler, [(c.job.id, c.job.items) for c in claimed],
                                deadline=max(c.job.deadline for c in claimed))
        for c, result in zip(claimed, results, strict=True):
            self.queue.complete(c, result)
        self.jobs_done += len(claimed)


class _Heartbeat:
    """While a batch runs, keep its entries from being reclaimed by other workers."""

    def __init__(self, queue: WorkerQueue, entry_ids: list[str], interval_s: float) -> None:
        self.queue, self.entry_ids, self.interval_s = queue, entry_ids, interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.queue.touch(self.entry_ids)
                self.queue.heartbeat(self.interval_s * 3)
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)
