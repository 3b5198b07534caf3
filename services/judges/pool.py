"""A process pool with a hard wall-clock timeout per item, for rule judges.

Rule judges call libraries that can hang or blow up on adversarial input
(sympy simplification, user regexes, generated code). A thread cannot be
stopped and SIGALRM only works in the main thread, so each item runs in a
worker process that is killed with SIGKILL when the item overruns its time:

    parent ── chunk of items ──▶ worker 0 ── results, as soon as done ──▶ parent
           ── chunk of items ──▶ worker 1 ── ...

The parent hands chunks to idle workers and reads results as they stream back
(a slow item's at once, quick items' batched over a millisecond, so cheap
items do not cost a message each). An item's clock starts when the parent
sees the previous result of its chunk (or sends the chunk), plus the two
milliseconds a quick result can be held back, so the timeout is never
stricter than ``timeout_s``. When an item overruns, its worker is killed and
respawned, the item answers ``timeout``, and the rest of its chunk goes back
to the queue (quick items whose results were still held back run again). A
worker that dies on its own (segfault, ``os._exit``, OOM kill) answers
``crashed`` for the item it was running, the same way. A counter in shared
memory tells the parent which item that was.

A call may also carry a deadline (Unix time: when the caller stops waiting).
Past it no item is sent, workers still running items are killed and respawned,
and every item not done answers ``deadline``, so work nobody waits for never
delays the next call.

Workers start with the **forkserver** context (spawn where forkserver does not
exist), never plain fork: the parent is often a multi-threaded server or
trainer (uvicorn, Redis clients, torch threads), and forking a threaded
process can deadlock on locks held by other threads (CPython 3.12+ warns about
it). The fork server is a clean single-threaded process; with ``preload`` it
imports heavy modules once, so a worker respawned after a kill is ready in
milliseconds instead of re-importing sympy. A process has one fork server,
started with the first worker of any pool: it imports the ``preload`` modules
of every pool built before then.

The function run in the workers must be a top-level (picklable) callable.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

_READY = "ready"  # first message of a worker, once its initializer has run
_STOP = None  # sent to a worker to make it exit
_FLUSH_S = 0.001  # a worker holds quick items' results this long at most, to send them together


class PoolError(RuntimeError):
    """The pool cannot run items: not started, closed, or workers keep dying at start."""


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one item: ``ok`` with its value, or why there is none."""

    status: Literal["ok", "error", "timeout", "crashed", "deadline"]
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def reason(self, what: str) -> str:
        """Why there is no value, as a sentence about ``what``: "math-verify timed out after 5s"."""
        if self.status in ("timeout", "deadline"):
            return f"{what} {self.error}"
        return f"{what} {self.status}: {self.error}"


def default_workers() -> int:
    """The CPUs this process may run on (affinity-aware; os.cpu_count() elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _worker_main(conn: Connection, started: Any, fn: Callable[[Any], Any],
                 initializer: Callable[[], None] | None) -> None:
    """Worker loop: receive a chunk, answer its items as they are done.

    A slow item's result is sent at once; quick items' results wait until the
    first of them is ``_FLUSH_S`` old, so that they do not cost a message (and a
    wake-up of the parent) each. ``started`` (shared memory) counts the items of
    the chunk begun so far: when the worker is killed or dies, the parent knows
    which item was running even if results before it were not sent yet.
    """
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
        done: list[tuple[bool, Any]] = []
        first_done = 0.0
        for n, item in enumerate(chunk, 1):
            started.value = n
            begun = time.monotonic()
            try:
                done.append((True, fn(item)))
            except Exception as exc:  # noqa: BLE001 - reported per item, never kills the worker
                done.append((False, f"{type(exc).__name__}: {exc}"))
            now = time.monotonic()
            first_done = first_done or now
            if n == len(chunk) or now - begun >= _FLUSH_S or now - first_done >= _FLUSH_S:
                _send_results(conn, done)
                done, first_done = [], 0.0


def _send_results(conn: Connection, done: list[tuple[bool, Any]]) -> None:
    try:
        conn.send(done)
    except Exception:  # noqa: BLE001 - e.g. an unpicklable return value: find it, send the rest
        for ok, value in done:
            try:
                conn.send([(ok, value)])
            except Exception as exc:  # noqa: BLE001 - reported per item
                conn.send([(False, f"result could not be sent: {type(exc).__name__}: {exc}")])


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    started_at: float
    started: Any  # shared counter: items of the current chunk the worker has begun
    ready: bool = False
    chunk: deque[int] = field(default_factory=deque)  # item indices still owed, in order
    sent: int = 0  # size of the chunk when it was sent
    timeout_s: float = math.inf  # limit per item of the chunk being run
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

    def map(self, items: Sequence[Any], *, timeout_s: float | None = None,
            deadline: float | None = None) -> list[Result]:
        """Run ``fn`` on every item; one ``Result`` per item, in order.

        Args:
            items: picklable arguments of ``fn``.
            timeout_s: limit per item for this call (default: the pool's ``timeout_s``).
            deadline: Unix time after which nobody waits for the results: no item starts
                after it, items still running are killed at it, and every item not done
                answers ``deadline``. None: no deadline.
        """
        limit_s = self.timeout_s if timeout_s is None else timeout_s
        if limit_s <= 0:
            raise ValueError("timeout_s must be > 0")
        with self._lock:
            if not self._workers:
                raise PoolError("pool is not started: call setup()")
            results: list[Result | None] = [None] * len(items)
            if not items:
                return []
            stop_at = math.inf if deadline is None else time.monotonic() + (deadline - time.time())
            size = max(1, min(self.chunk_size, math.ceil(len(items) / (4 * len(self._workers)))))
            pending = deque(deque(range(i, min(i + size, len(items)))) for i in range(0, len(items), size))
            try:
                self._replace_dead()
                while (pending or any(w.chunk for w in self._workers)) and time.monotonic() < stop_at:
                    for w in self._workers:
                        if w.ready and not w.chunk and pending:
                            self._send(w, pending.popleft(), items, pending, limit_s)
                    self._pump(min(self._next_deadline(), stop_at) - time.monotonic(), results, pending)
            finally:
                # Past the deadline, or interrupted (Ctrl-C, unpicklable item): busy workers hold stale chunks.
                self._abandon(results, pending)
            return results  # type: ignore[return-value]  # every slot is filled above

    # ------------------------------------------------------------ internals

    def _abandon(self, results: list, pending: deque[deque[int]]) -> None:
        """Keep what busy workers have already answered, kill them, and answer the rest ``deadline``.

        A killed worker's running item, and the quick items before it whose results it
        still held back, were stopped; the items after it never started.
        """
        now = time.monotonic()
        for w in list(self._workers):
            if not w.chunk:
                continue
            self._drain(w, results, now)
            if w.chunk:
                w.process.kill()
                w.process.join()
                begun, rest = self._split(w)
                _fill(results, begun, "deadline", "stopped at the request's deadline")
                _fill(results, rest, "deadline", "not run: the request's deadline had passed")
                w.chunk = deque()
                self._restart(w)
        for chunk in pending:
            _fill(results, chunk, "deadline", "not run: the request's deadline had passed")

    def _send(self, w: _Worker, chunk: deque[int], items: Sequence[Any], pending: deque, timeout_s: float) -> None:
        w.started.value = 0  # the worker is idle: nothing of this chunk is begun yet
        try:
            w.conn.send([items[i] for i in chunk])
        except OSError:  # died while idle: nothing of this chunk ran
            pending.appendleft(chunk)
            self._restart(w)
            return
        w.chunk, w.sent = chunk, len(chunk)
        w.timeout_s = timeout_s
        w.deadline = time.monotonic() + timeout_s

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
                self._settle(w, results, pending, "timeout", f"timed out after {w.timeout_s:g}s")
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
            for ok, value in msg:
                i = w.chunk.popleft()
                results[i] = Result("ok", value) if ok else Result("error", error=value)  # type: ignore[index]
            # Quick results may have been held up to 2 * _FLUSH_S while the next item ran.
            w.deadline = now + w.timeout_s + 2 * _FLUSH_S if w.chunk else math.inf

    def _settle(self, w: _Worker, results: list | None, pending: deque | None, status: str, why: str) -> None:
        """Kill ``w``; its running item answers ``status``; the rest of its chunk is requeued.

        The items it finished whose results were still held back run again (pure
        functions, so the same result); items not begun go back unchanged.
        """
        if w.process.exitcode is None:
            w.process.kill()
            w.process.join()
        if w.chunk:
            begun, rest = self._split(w)
            results[begun[-1]] = Result(status, error=why)  # type: ignore[index, arg-type]
            rest = begun[:-1] + rest
            if rest and pending is not None:
                pending.appendleft(deque(rest))
            w.chunk = deque()
        if not w.ready:
            self._start_failures += 1
            if self._start_failures > self.max_start_failures:
                self._kill(w)
                self._workers.remove(w)
                raise PoolError(f"workers keep dying before they are ready: {why}")
        self._restart(w)

    @staticmethod
    def _split(w: _Worker) -> tuple[list[int], list[int]]:
        """The owed items of a dead worker's chunk: those it began (the last was running), and the rest."""
        owed = list(w.chunk)
        received = w.sent - len(owed)
        running = min(max(0, w.started.value - 1 - received), len(owed) - 1)
        return owed[: running + 1], owed[running + 1 :]

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
        started = self._ctx.RawValue("q", 0)
        process = self._ctx.Process(target=_worker_main, args=(child_conn, started, self.fn, self.initializer),
                                    daemon=True, name="judge-pool-worker")
        with _main_module_hidden():
            process.start()
        child_conn.close()  # the child holds its own copy; closing ours makes its death an EOF
        return _Worker(process=process, conn=parent_conn, started_at=time.monotonic(), started=started)

    @staticmethod
    def _kill(w: _Worker) -> None:
        if w.process.exitcode is None:
            w.process.kill()  # SIGKILL: sympy in a C loop ignores anything politer
        w.process.join()
        w.conn.close()
        w.process.close()


def _fill(results: list, indices: Sequence[int], status: str, why: str) -> None:
    for i in indices:
        results[i] = Result(status, error=why)  # type: ignore[arg-type]


_preload: list[str] = ["__main__"]  # modules the fork server imports, across every pool of this process


def _context(start_method: str | None, preload: Sequence[str]) -> BaseContext:
    if start_method == "fork":
        raise ValueError("'fork' is unsafe in a threaded parent; use 'forkserver' or 'spawn'")
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":  # always set: the default preload is the program's __main__
        _preload.extend(m for m in preload if m not in _preload)
        ctx.set_forkserver_preload(list(_preload))
    return ctx


_hiding = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a process without it importing the program's ``__main__``: spawn and forkserver children
    run the parent's main module again (to find objects pickled from it) unless it has no file or
    module name to import it by. Inside another program — a TRL or verl training script — that would
    re-import the program with its torch, transformers and trainer in every judge worker, for nothing:
    the workers run functions of this package. A stand-in ``__main__`` is in place while the process
    starts (one start at a time), then the program's own is put back."""
    with _hiding:
        program = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if program is not None:
                sys.modules["__main__"] = program
