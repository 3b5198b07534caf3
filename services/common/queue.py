"""A job queue on Redis Streams with one consumer group per service.

Gateway side (`GatewayQueue`, asyncio): ``submit`` is idempotent by job id (a
Lua script sets the request marker and appends to the stream atomically, and
refuses when the queue is full); ``wait`` returns the stored result, woken by
pub/sub with a polling fallback so a missed message only costs latency.

Worker side (`WorkerQueue`, blocking): ``claim`` reads new entries for this
consumer (XREADGROUP) and, every so often, takes over entries whose worker went
silent for the visibility timeout (XAUTOCLAIM); ``touch`` resets the idle time
of entries still being worked on; ``complete`` stores the result with a TTL,
announces it, and acks + deletes the entry in one transaction. Each delivery
counts an attempt; a job past ``max_attempts`` is answered with an error and
copied to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from cgpo.services.common.errors import ConflictError, JobFailedError, QueueFullError, ServiceUnavailableError
from cgpo.services.common.keys import Keys
from cgpo.services.common.schemas import JobResult, QueueJob

log = logging.getLogger(__name__)

# KEYS: request marker, stream. ARGV: ttl_s, job id, max_queue, payload, digest of the items.
# Returns 1 (queued), 0 (same id and items: already queued or answered), -1 (queue full),
# -2 (the id was used for other items).
_SUBMIT = """
local seen = redis.call('GET', KEYS[1])
if seen then
  if seen == ARGV[5] then return 0 end
  return -2
end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[5], 'EX', ARGV[1])
redis.call('XADD', KEYS[2], '*', 'job', ARGV[2], 'payload', ARGV[4])
return 1
"""

# KEYS: result, stream, attempts, stats. ARGV: result, ttl_ms, entry id, channel, job id, group.
# The first result of a job wins: a worker that went silent past the visibility timeout and then
# finished anyway (its job was run again elsewhere) must not replace what the client already has.
# Returns 1 (stored), 0 (a result was already there: this one is discarded and counted).
_COMPLETE = """
local fresh = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
redis.call('XACK', KEYS[2], ARGV[6], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
if not fresh then
  redis.call('HINCRBY', KEYS[4], 'late_results', 1)
  return 0
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

def digest(items: list[dict[str, Any]]) -> str:
    """What a request id is bound to: a hash of its items (canonical JSON)."""
    text = json.dumps(items, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
# After a Redis restart every pooled connection is dead: a command that fails on one is retried
# once on a fresh connection (all our commands are safe to repeat: submit and complete are
# idempotent, a repeated read only delays a job until it is reclaimed).
_RETRY = {"retry_on_error": [redis.ConnectionError, redis.TimeoutError], "socket_connect_timeout": 2}


def _retry(module: object) -> object:
    return module.Retry(NoBackoff(), 1)  # type: ignore[attr-defined]


def unavailable(exc: Exception) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"the job queue (Redis) is unreachable: {exc}", {"cause": type(exc).__name__})


class GatewayQueue:
    """Submit jobs and await their results (asyncio)."""

    def __init__(self, url: str, keys: Keys, *, max_queue: int, result_ttl_s: float,
                 poll_interval_s: float = 0.5) -> None:
        self.keys = keys
        self.max_queue = max_queue
        self.result_ttl_s = result_ttl_s
        self.poll_interval_s = poll_interval_s
        self.redis = aioredis.from_url(url, socket_timeout=5, health_check_interval=10,
                                       retry=_retry(redis.asyncio.retry), **_RETRY)
        self._submit = self.redis.register_script(_SUBMIT)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.listen_tick_s = 0.25

    async def start(self) -> None:
        if self._listener is None:
            self._stopping.clear()
            self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        # The listener is stopped by a flag, not by cancellation: redis-py can swallow a CancelledError
        # that lands inside a blocking pub/sub read, which would leave close() waiting forever.
        if self._listener is not None:
            self._stopping.set()
            done, _ = await asyncio.wait({self._listener}, timeout=self.listen_tick_s * 8)
            if not done:
                self._listener.cancel()
            self._listener = None
        await self.redis.aclose()

    async def submit(self, job: QueueJob) -> bool:
        """Queue ``job``; False when its id was seen before with the same items (then only wait for
        it). The id seen with other items is a ``ConflictError``."""
        try:
            status = await self._submit(
                keys=[self.keys.request(job.id), self.keys.stream],
                args=[int(self.result_ttl_s), job.id, self.max_queue, job.model_dump_json(), digest(job.items)],
            )
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc
        if status == -1:
            raise QueueFullError(f"the {self.keys.service} queue is full ({self.max_queue} jobs); retry later")
        if status == -2:
            raise ConflictError()
        return status == 1

    async def wait(self, job_id: str, timeout_s: float) -> JobResult | None:
        """The job's result, or None if it is not ready within ``timeout_s``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                result = await self.result(job_id)
                if result is not None:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), min(left, self.poll_interval_s))
        finally:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(job_id, None)

    async def result(self, job_id: str) -> JobResult | None:
        try:
            raw = await self.redis.get(self.keys.result(job_id))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc
        return None if raw is None else JobResult.model_validate_json(raw)

    async def depth(self) -> int:
        try:
            return int(await self.redis.xlen(self.keys.stream))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc

    async def late_results(self) -> int:
        """Results discarded because the job already had one (a worker resumed after being reclaimed)."""
        try:
            return int(await self.redis.hget(self.keys.stats, "late_results") or 0)
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc

    async def live_workers(self) -> int:
        try:
            return len([k async for k in self.redis.scan_iter(match=self.keys.worker_pattern, count=100)])
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _listen(self) -> None:
        """Wake waiters on the done channel until ``close``; resubscribe after Redis outages."""
        backoff_s = 0.1
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.done_channel)
                backoff_s = 0.1
                while not self._stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=self.listen_tick_s)
                    if message is None:
                        continue
                    for future in self._waiters.get(message["data"].decode(), []):
                        if not future.done():
                            future.set_result(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: resubscribe; waiters still poll
                log.warning("result listener lost Redis (%s); resubscribing", exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def _lost_stream(exc: redis.ResponseError) -> bool:
    """The stream or its group vanished under us (Redis restarted empty or was flushed)."""
    return "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)


@dataclass
class Claimed:
    """A stream entry this worker owns, with its decoded job."""

    entry_id: str
    job: QueueJob
    attempt: int
    claimed_s: float


class WorkerQueue:
    """Claim, heartbeat and complete jobs (blocking; one per worker process)."""

    def __init__(self, url: str, keys: Keys, consumer: str, *, visibility_timeout_s: float,
                 max_attempts: int, result_ttl_s: float) -> None:
        self.keys = keys
        self.consumer = consumer
        self.visibility_ms = int(visibility_timeout_s * 1000)
        self.max_attempts = max_attempts
        self.result_ttl_s = result_ttl_s
        self.redis = redis.Redis.from_url(url, socket_timeout=10, retry=_retry(redis.retry), **_RETRY)
        self._complete = self.redis.register_script(_COMPLETE)
        self._last_reclaim_s = 0.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def heartbeat(self, ttl_s: float) -> None:
        self.redis.set(self.keys.worker(self.consumer), str(time.time()), px=int(ttl_s * 1000))

    def claim(self, count: int, block_ms: int) -> list[Claimed]:
        """Up to ``count`` jobs: reclaimed ones from dead workers first, then new ones."""
        entries = self._reclaim(count)
        if len(entries) < count:
            try:
                reply = self.redis.xreadgroup(self.keys.group, self.consumer, {self.keys.stream: ">"},
                                              count=count - len(entries), block=block_ms or None)
            except redis.ResponseError as exc:
                if not _lost_stream(exc):
                    raise
                self.ensure_group()  # Redis lost its data (restart without persistence, FLUSHALL)
                return self._admit(entries)
            for _stream, items in reply or []:
                entries.extend(items)
        return self._admit(entries)

    def touch(self, entry_ids: list[str]) -> None:
        """Reset the idle time of entries still being worked on, so nobody reclaims them."""
        if entry_ids:
            self.redis.xclaim(self.keys.stream, self.keys.group, self.consumer, 0, entry_ids, justid=True)

    def complete(self, claimed: Claimed, result: JobResult) -> bool:
        """Store ``result`` unless the job already has one (then count a late result); ack the entry.

        True when this result is the one stored. A result that cannot be written as JSON is
        stored as the job's error instead, so no output can make a job unanswerable.
        """
        try:
            payload = result.model_dump_json()
        except ValueError as exc:  # pydantic's serialization errors are ValueErrors
            error = JobFailedError(f"the result could not be serialized: {exc}")
            payload = JobResult.failed(result.id, error).model_dump_json()
        return bool(self._complete(
            keys=[self.keys.result(claimed.job.id), self.keys.stream, self.keys.attempts, self.keys.stats],
            args=[payload, int(self.result_ttl_s * 1000), claimed.entry_id, self.keys.done_channel,
                  claimed.job.id, self.keys.group]))

    def _reclaim(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        now = time.monotonic()
        if now - self._last_reclaim_s < self.visibility_ms / 4000:
            return []
        self._last_reclaim_s = now
        try:
            reply = self.redis.xautoclaim(self.keys.stream, self.keys.group, self.consumer,
                                          min_idle_time=self.visibility_ms, start_id="0-0", count=count)
        except redis.ResponseError as exc:
            if not _lost_stream(exc):
                raise
            self.ensure_group()
            return []
        entries = reply[1]
        if entries:
            log.warning("reclaimed %d job(s) from silent workers", len(entries))
        return [e for e in entries if e[1]]  # deleted entries come back with no fields

    def _admit(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Claimed]:
        """Count the delivery; dead-letter jobs out of attempts or unreadable."""
        if not entries:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.hincrby(self.keys.attempts, entry_id, 1)
            attempts = pipe.execute()
        claimed = []
        now = time.monotonic()
        for (entry_id, fields), attempt in zip(entries, attempts, strict=True):
            eid = entry_id.decode()
            try:
                job = QueueJob.model_validate_json(fields[b"payload"])
            except Exception as exc:  # noqa: BLE001 - a corrupt entry must not stop the worker
                self._dead_letter(eid, fields, f"unreadable job: {exc}")
                continue
            if attempt > self.max_attempts:
                self._dead_letter(eid, fields, f"gave up after {self.max_attempts} attempts", job)
                continue
            claimed.append(Claimed(eid, job, attempt, now))
        return claimed

    def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes], reason: str,
                     job: QueueJob | None = None) -> None:
        log.error("dead-lettering job %s: %s", fields.get(b"job", b"?").decode(), reason)
        self.redis.xadd(self.keys.dead, {**fields, b"reason": reason.encode(), b"failed_at": str(time.time())},
                        maxlen=10_000, approximate=True)
        job_id = job.id if job else fields.get(b"job", b"").decode()
        claimed = Claimed(entry_id, job or QueueJob(id=job_id, items=[], deadline=0), 0, 0.0)
        self.complete(claimed, JobResult.failed(job_id, JobFailedError(f"job {job_id} failed: {reason}")))
