"""A process pool with a hard wall-clock timeout per item, for rule judges.

Rule judges call libraries that can hang or blow up on adversarial input
(sympy simplification, user regexes, generated code). A thread cannot be
stopped and SIGALRM only works in the main thread, so each item runs in a
worker process that is killed with SIGKILL when the item overruns its time:

    parent ── chunk of items ──▶ worker 0 ── one result per item, as soon as done ──▶ parent
           ── chunk of items ──▶ worker 1 ── ...

The parent hands chunks to idle workers and reads results as they stream back.
An item's clock starts when the parent sees the previous result of its chunk
(or sends the chunk), so the timeout is never stricter than ``timeout_s``.
When an item overruns, its worker is killed and respawned, the item answers
``timeout``, and the rest of its chunk goes back to the queue. A worker that
dies on its own (segfault, ``os._exit``, OOM kill) answers ``crashed`` for the
item it was running, the same way.

Workers start with the **forkserver** context (spawn where forkserver does not
exist), never plain fork: the parent is often a multi-threaded server or
trainer (uvicorn, Redis clients, torch threads), and forking a threaded
process can deadlock on locks held by other threads (CPython 3.12+ warns about
it). The fork server is a clean single-threaded process; with ``preload`` it
imports heavy modules once, so a worker respawned after a kill is ready in
milliseconds instead of re-importing sympy.

The function run in the workers must be a top-level (picklable) callable.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

_READY = "ready"  # first message of a worker, once its initializer has run
_STOP = None  # sent to a worker to make it exit


class PoolError(RuntimeError):
    """The pool cannot run items: not started, closed, or workers keep dying at start."""


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one item: ``ok`` with its value, or why there is none."""

    status: Literal["ok", "error", "timeout", "crashed"]
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def default_workers() -> int:
    """The CPUs this process may run on (affinity-aware; os.cpu_count() elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _worker_main(conn: Connection, fn: Callable[[Any], Any], initializer: Callable[[], None] | None) -> None:
    """Worker loop: receive a chunk, answer each item as soon as it is done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    if initializer is not None:
        initializer()
    conn.send(_READY)
    while True:
        try:
            chunk = conn.recv()
        except EOFError:  # parent went away
            return
        if chunk is _STOP:
            return
        for item in chunk:
            try:
                out = (True, fn(item))
            except Exception as exc:  # noqa: BLE001 - reported per item, never kills the worker
                out = (False, f"{type(exc).__name__}: {exc}")
            try:
                conn.send(out)
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable return value
                conn.send((False, f"result could not be sent: {type(exc).__name__}: {exc}"))


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    chunk: deque[int] = field(default_factory=deque)  # item indices still owed; head is running
    deadline: float = math.inf  # when the running item times out (monotonic seconds)


class WorkerPool:
    """N worker processes running ``fn`` on items with a hard per-item timeout.

    ``setup()`` starts the workers, ``map(items)`` returns one ``Result`` per
    item in order, ``close()`` stops them. The pool is reusable across
    batches; dead workers are respawned. ``map`` calls are serialised.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int | None = None,
        timeout_s: float = 5.0,
        chunk_size: int = 64,
        initializer: Callable[[], None] | None = None,
        preload: Sequence[str] = (),
        start_method: Literal["forkserver", "spawn"] | None = None,
        startup_timeout_s: float = 60.0,
        max_start_failures: int = 3,
    ) -> None:
        """
        Args:
            fn: top-level callable run on each item in a worker.
            workers: number of processes; default: the CPUs this process may use.
            timeout_s: hard wall-clock limit per item; the worker is SIGKILLed past it.
            chunk_size: most items sent to a worker at once (fewer for small batches,
                so every worker gets work).
            initializer: top-level callable run once in each worker before its first item.
            preload: modules the fork server imports once, so (re)started workers are warm.
                Only effective if no fork server is running yet in this process.
            start_method: "forkserver" (default where available) or "spawn"; never "fork".
            startup_timeout_s: how long a worker may take to import and run ``initializer``.
            max_start_failures: consecutive workers dying before ready that make ``map`` give up.
        """
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.fn = fn
        self.n_workers = workers or default_workers()
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size
        self.initializer = initializer
        self.startup_timeout_s = startup_timeout_s
        self.max_start_failures = max_start_failures
        self._ctx = _context(start_method, preload)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._start_failures = 0
        self.restarts = 0  # workers respawned after a timeout or crash (for metrics/tests)

    # ------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        """Start the workers and wait until each is ready (imports and initializer done)."""
        with self._lock:
            while len(self._workers) < self.n_workers:
                self._workers.append(self._spawn())
            deadline = time.monotonic() + self.startup_timeout_s
            while not all(w.ready for w in self._workers):
                self._pump(deadline - time.monotonic(), results=None)
                if time.monotonic() > deadline:
                    raise PoolError(f"workers not ready after {self.startup_timeout_s}s")

    def close(self) -> None:
        """Stop every worker (politely, then SIGKILL). Idempotent; ``setup()`` restarts."""
        with self._lock:
            for w in self._workers:
                try:
                    w.conn.send(_STOP)
                except OSError:
                    pass
            for w in self._workers:
                w.process.join(timeout=1.0)
                self._kill(w)
            self._workers = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def __enter__(self) -> WorkerPool:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ work

    def map(self, items: Sequence[Any]) -> list[Result]:
        """Run ``fn`` on every item; one ``Result`` per item, in order."""
        with self._lock:
            if not self._workers:
                raise PoolError("pool is not started: call setup()")
            results: list[Result | None] = [None] * len(items)
            if not items:
                return []
            size = max(1, min(self.chunk_size, math.ceil(len(items) / (4 * len(self._workers)))))
            pending = deque(deque(range(i, min(i + size, len(items)))) for i in range(0, len(items), size))
            try:
                self._replace_dead()
                while pending or any(w.chunk for w in self._workers):
                    for w in self._workers:
                        if w.ready and not w.chunk and pending:
                            self._send(w, pending.popleft(), items, pending)
                    self._pump(self._next_deadline() - time.monotonic(), results, pending)
            finally:
                # Interrupted (Ctrl-C, unpicklable item): busy workers hold stale chunks.
                for i, w in enumerate(self._workers):
                    if w.chunk:
                        self._kill(w)
                        self._workers[i] = self._spawn()
            return results  # type: ignore[return-value]  # every slot is filled above

    # ------------------------------------------------------------ internals

    def _send(self, w: _Worker, chunk: deque[int], items: Sequence[Any], pending: deque) -> None:
        try:
            w.conn.send([items[i] for i in chunk])
        except OSError:  # died while idle: nothing of this chunk ran
            pending.appendleft(chunk)
            self._restart(w)
            return
        w.chunk = chunk
        w.deadline = time.monotonic() + self.timeout_s

    def _pump(self, wait_s: float, results: list | None, pending: deque | None = None) -> None:
        """Wait for messages or deaths (at most ``wait_s``), then settle every worker."""
        handles = [h for w in self._workers for h in (w.conn, w.process.sentinel)]
        wait(handles, timeout=None if math.isinf(wait_s) else max(0.0, wait_s))
        now = time.monotonic()
        for w in list(self._workers):
            self._drain(w, results, now)
            if w.process.exitcode is not None:
                self._settle(w, results, pending, "crashed", f"worker died (exit code {w.process.exitcode})")
            elif w.chunk and now >= w.deadline:
                self._settle(w, results, pending, "timeout", f"timed out after {self.timeout_s:g}s")
            elif not w.ready and now - w.started_at > self.startup_timeout_s:
                self._settle(w, results, pending, "crashed", "worker did not start")

    def _drain(self, w: _Worker, results: list | None, now: float) -> None:
        """Read every message already sent by ``w``."""
        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                return
            if msg == _READY:
                w.ready = True
                self._start_failures = 0
                continue
            ok, value = msg
            i = w.chunk.popleft()
            results[i] = Result("ok", value) if ok else Result("error", error=value)  # type: ignore[index]
            w.deadline = now + self.timeout_s if w.chunk else math.inf

    def _settle(self, w: _Worker, results: list | None, pending: deque | None, status: str, why: str) -> None:
        """Kill ``w``; its running item answers ``status``; the rest of its chunk is requeued."""
        if w.chunk:
            results[w.chunk.popleft()] = Result(status, error=why)  # type: ignore[index, arg-type]
            if w.chunk and pending is not None:
                pending.appendleft(w.chunk)
            w.chunk = deque()
        if not w.ready:
            self._start_failures += 1
            if self._start_failures > self.max_start_failures:
                self._kill(w)
                self._workers.remove(w)
                raise PoolError(f"workers keep dying before they are ready: {why}")
        self._restart(w)

    def _restart(self, w: _Worker) -> None:
        self._kill(w)
        self._workers[self._workers.index(w)] = self._spawn()
        self.restarts += 1

    def _replace_dead(self) -> None:
        """Respawn workers that died between batches (or were lost to start failures)."""
        for i, w in enumerate(self._workers):
            if w.process.exitcode is not None:
                self._kill(w)
                self._workers[i] = self._spawn()
                self.restarts += 1
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def _next_deadline(self) -> float:
        starting = [w.started_at + self.startup_timeout_s for w in self._workers if not w.ready]
        return min([w.deadline for w in self._workers] + starting)

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.fn, self.initializer), daemon=True, name="judge-pool-worker"
        )
        process.start()
        child_conn.close()  # the child holds its own copy; closing ours makes its death an EOF
        return _Worker(process=process, conn=parent_conn, started_at=time.monotonic())

    @staticmethod
    def _kill(w: _Worker) -> None:
        if w.process.exitcode is None:
            w.process.kill()  # SIGKILL: sympy in a C loop ignores anything politer
        w.process.join()
        w.conn.close()
        w.process.close()


def _context(start_method: str | None, preload: Sequence[str]) -> BaseContext:
    if start_method == "fork":
        raise ValueError("'fork' is unsafe in a threaded parent; use 'forkserver' or 'spawn'")
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    if start_method == "forkserver" and preload:
        ctx.set_forkserver_preload(["__main__", *preload])
    return ctx
