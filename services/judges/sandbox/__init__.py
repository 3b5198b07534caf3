"""Run untrusted Python under OS limits, fast: a fork server ("zygote") per slot.

The service never forks. ``Sandbox.start`` launches a helper interpreter
(``python -I -S zygote.py``, scrubbed environment, stdlib only, own session).
That zygote sets up the containment that can be shared — private mount, network
and IPC namespaces where the kernel lets us, a read-only root with an empty
tmpfs on /tmp, child-subreaper, no-new-privs, a claimed unprivileged uid — then
re-execs itself (so no ctypes handle survives into the children) and serves
requests over a pipe: one length-prefixed JSON frame in, one out.

Per request the zygote forks a child that: starts a new session; sets rlimits
(CPU s, address space, file size, processes, core=0); drops to the sandbox uid
when root; chdirs into a fresh private directory; clears ``os.environ``; installs
an audit hook (refuses sockets, ctypes, writes outside the directory, other
processes' /proc entries, signals outside its own group, and exec when the uid
was not dropped); then execs the program and each test in one fresh module.
The zygote keeps bounded tails of stdout/stderr, SIGKILLs the whole process
group at the wall-clock deadline, kills and reaps anything left over (by uid as
root; as the subreaper otherwise), and removes the directory.

What holds when (see ``Sandbox.isolation``):
  root + CAP_SYS_ADMIN  kernel: own uid, netns (no interfaces up), ro root,
                        private /tmp, rlimits incl. RLIMIT_NPROC, no setuid.
  root, no namespaces   kernel: own uid (so /proc/<pid>/environ, signals to the
                        service and RLIMIT_NPROC are enforced), rlimits;
                        network and writes outside the directory: audit hook.
  not root              rlimits (NPROC counted against the service's uid);
                        everything else: audit hook — best effort, since
                        Python-level hooks can be bypassed by a determined
                        program. fork is allowed, exec is not.
Root keeping its uid (``drop_privileges=False``) is not bound by RLIMIT_NPROC, so
the hook refuses fork too. With a mount namespace, a 0700 parent of the
interpreter (/root/.pyenv) is re-exposed read-only; without one, the sandbox uid
may be unable to import modules the zygote did not preload (``stdlib_readable``).
The verdict comes from inside the sandboxed process: a per-run nonce stops a
program from trivially forging "ok", not a program that inspects its own frames.

Modules: this one is the service side (``Sandbox``, ``SandboxPool``);
``protocol`` the frames and types both sides share; the zygote process runs
``zygote`` (one-time setup, serve loop), ``supervisor`` (fork, watch, judge and
clean up one run) and ``child`` (enter the sandbox, run the program and tests).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from services.judges.sandbox.protocol import (
    SANDBOX_PATH,
    STATUSES,
    Isolation,
    Limits,
    RunResult,
    SandboxError,
    read_frame,
    write_frame,
)

__all__ = ["STATUSES", "Isolation", "Job", "Limits", "RunResult", "Sandbox", "SandboxError", "SandboxPool"]

_ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")


@dataclass(frozen=True)
class Job:
    """One program and the test snippets run after it, in the same module namespace."""

    program: str
    tests: Sequence[str] = ()


class Sandbox:
    """One zygote; runs one program at a time (thread-safe). Restarts a dead zygote."""

    def __init__(self, limits: Limits | None = None, isolation: Isolation | None = None) -> None:
        self.limits = limits or Limits()
        self.isolation_config = isolation or Isolation()
        self.isolation: dict = {}
        """What the running zygote achieved (netns, mountns, uid, ...)."""
        self._proc = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._proc is None:
                self._spawn()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, program: str, tests: Sequence[str] = (), limits: Limits | None = None) -> RunResult:
        """Run ``program`` then each test; never raises for a misbehaving program."""
        limits = limits or self.limits
        request = {"program": program, "tests": list(tests), "limits": asdict(limits)}
        with self._lock:
            try:
                if self._proc is not None and self._proc.poll() is not None:
                    self._kill()  # died since the last run: start a fresh one
                if self._proc is None:
                    self._spawn()
                write_frame(self._proc.stdin.fileno(), request)
                # The zygote enforces the timeout; this margin only catches a wedged zygote.
                reply = read_frame(self._proc.stdout.fileno(), time.monotonic() + limits.timeout_s + 10)
                return RunResult.from_dict(reply)
            except (OSError, SandboxError, TimeoutError, ValueError, TypeError) as exc:
                self._kill()
                return RunResult(status="error", message=f"sandbox failure: {exc!r}")

    def _spawn(self) -> None:
        config = json.dumps(asdict(self.isolation_config))
        env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _ZYGOTE, "--zygote", config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
            start_new_session=True, close_fds=True,
        )
        try:
            ready = read_frame(self._proc.stdout.fileno(), time.monotonic() + 30)
        except (OSError, SandboxError, TimeoutError, ValueError) as exc:
            self._kill()
            raise SandboxError(f"zygote did not start: {exc!r}") from exc
        if "error" in ready:
            self._kill()
            raise SandboxError(f"zygote setup failed: {ready['error']}")
        self.isolation = ready["isolation"]

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=2)  # EOF on stdin makes a healthy zygote exit
        except Exception:  # noqa: BLE001 - any failure here means: kill it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()


class SandboxPool:
    """``size`` zygotes; ``run_many`` spreads jobs over them, results in input order."""

    def __init__(self, size: int | None = None, limits: Limits | None = None,
                 isolation: Isolation | None = None) -> None:
        self.size = max(1, size or os.cpu_count() or 1)
        self.sandboxes = [Sandbox(limits, isolation) for _ in range(self.size)]
        self._free: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        for sandbox in self.sandboxes:
            self._free.put(sandbox)
        self._executor = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="sandbox")
            # Zygotes start in parallel; a failure surfaces as `error` results later.
            list(self._executor.map(_try_start, self.sandboxes))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for sandbox in self.sandboxes:
            sandbox.close()

    @property
    def isolation(self) -> dict:
        return self.sandboxes[0].isolation

    def run(self, job: Job, limits: Limits | None = None) -> RunResult:
        sandbox = self._free.get()
        try:
            return sandbox.run(job.program, job.tests, limits)
        finally:
            self._free.put(sandbox)

    def run_many(self, jobs: Sequence[Job], limits: Limits | None = None) -> list[RunResult]:
        self.start()
        return list(self._executor.map(lambda job: self.run(job, limits), jobs))


def _try_start(sandbox: Sandbox) -> None:
    try:
        sandbox.start()
    except SandboxError:
        pass
