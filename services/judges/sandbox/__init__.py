"""Run untrusted Python under OS limits, fast: a fork server ("zygote") per slot.

The service never forks. ``Sandbox.start`` launches a helper interpreter
(``python -I -S zygote.py``, scrubbed environment, stdlib only, own session)
connected by a Unix socket pair (not pipes: /proc/<pid>/fd/<n> reopens a pipe,
never a socket). That zygote sets up the containment that can be shared —
private mount, network, IPC and PID namespaces where the kernel lets us, then a
minimal root it pivots into (``rootfs``: read-only system directories, the Python
installation without its site-packages, only this package of the checkout, a
generated /etc, a minimal /dev, its own /proc with ``hidepid=invisible``, a
private /tmp), child-subreaper, no-new-privs, a seccomp filter (``syscalls``), two
claimed unprivileged uids — then re-execs itself (so no ctypes handle survives
into the runs) and serves requests: a length-prefixed JSON frame plus the program
and the tests as raw bytes in (read into buffers the zygote wipes before it forks
a program process, so no program finds any run's tests in the memory it starts
with), one JSON frame out.

Per request the zygote forks two processes (``supervisor``):
  * the *harness* (trusted, ``harness``): forked first, holds the only write end
    of the report channel, runs the tests under its own uid, non-dumpable;
  * the *program* (untrusted, ``program``): never holds the report channel nor
    the tests, runs the response's code as ``__main__``, then answers the harness's
    requests (call, attribute, item, len, bool, str, iteration) over a socket pair.
Values cross as plain data (``wire``): the harness rebuilds only exact builtin and
a few stdlib types, anything else is a proxy whose ``==`` is identity, so
always-equal objects, str subclasses and patched builtins in the program change
nothing in the tests; a name the tests use as a module is the harness's own
import. An exit or death of the program during the tests fails the run whatever
the tests catch. Both processes start a new session, get rlimits (CPU s, address
space, file size, processes, core=0), drop to their uid when root, chdir and
clear ``os.environ``, and install an audit hook (refuses sockets, ctypes, writes
outside the run's directory — resolving relative paths against every directory
the process holds open, since ``dir_fd`` is invisible to the ``open`` event —,
other processes' /proc entries, signals and rlimits outside their own process or
group, re-imports of ``_signal``/``posix``, and exec when the uid was not dropped).
The zygote keeps bounded tails of stdout/stderr, takes the verdict from the
harness's report and from how the processes ended, SIGKILLs both process groups
at the wall-clock deadline, kills and reaps anything left over (by uid as root;
as the subreaper otherwise), and removes the directory (``cleanup``, iteratively).

No run can take a zygote down for good: a failure of the supervisor answers that
run and the zygote serves on; a zygote that dies anyway (or wedges) is replaced and
the run repeated once on a fresh one, and a second loss is ``crashed_sandbox``, a
failure of the program's — never ``error``, which stays for a sandbox that fails
by itself (a zygote that cannot start).

What holds when (see ``Sandbox.isolation`` and ``missing_layers``):
  root + CAP_SYS_ADMIN  kernel: own uids, netns (no interfaces up), pidns with a
  ("strict")            hidepid /proc (the program sees its own processes only), the
                        minimal root (nothing of the host's filesystem but system
                        directories and the interpreter, read-only), rlimits incl.
                        RLIMIT_NPROC, no setuid, seccomp. ``Isolation(strict=True)``
                        runs nothing unless all of these are in place (``unavailable``).
  root, no namespaces   kernel: own uids (so /proc/<pid>/environ, signals to the
                        service and the harness, RLIMIT_NPROC are enforced),
                        rlimits, seccomp (no sockets but socketpair, no ptrace,
                        pidfds or prlimit on other processes, no new namespaces);
                        writes outside the directory: audit hook; the host's files
                        are readable as for any unprivileged uid.
  not root              rlimits (NPROC counted against the service's uid), seccomp,
                        a non-dumpable zygote, harness and service (their memory,
                        environment and descriptors are out of the program's reach);
                        everything else: audit hook — best effort, since Python-level
                        hooks can be bypassed by a determined program. fork is
                        allowed, exec is not.
Without pyseccomp or libseccomp the sandbox still starts (not strict): ``seccomp``
is False and ``seccomp_error`` says why. Root keeping its uid
(``drop_privileges=False``) is not bound by RLIMIT_NPROC, so the hook refuses fork
too; it is for tests only.

Modules: this one is the service side (``Sandbox``, ``SandboxPool``);
``protocol`` the frames and types both sides share; the zygote process runs
``zygote`` (one-time setup, serve loop), ``rootfs`` (the minimal root),
``syscalls`` (the seccomp filter), ``supervisor`` (fork, watch and judge one run),
``cleanup`` (after one run), ``confine`` (enter the sandbox), ``program`` and
``harness`` (the two sides of a run), ``remote`` (the harness's proxies and
channel), ``wire`` and ``names`` (the values between them).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from cgpo.services.judges.sandbox.protocol import (
    SANDBOX_PATH,
    STATUSES,
    Isolation,
    Limits,
    RunResult,
    SandboxError,
    SandboxUnavailable,
    read_frame,
    write_request,
)

__all__ = ["STATUSES", "Isolation", "Job", "Limits", "RunResult", "Sandbox", "SandboxError", "SandboxPool",
           "SandboxUnavailable", "missing_layers"]

_ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")


@dataclass(frozen=True)
class Job:
    """One program and the test snippets run against it (in one namespace of their own)."""

    program: str
    tests: Sequence[str] = ()
    entry_point: str | None = None
    """The name under test; the only program name allowed to shadow a builtin in the tests."""

    def __post_init__(self) -> None:
        check_job(self.program, self.tests, self.entry_point)


def check_job(program: object, tests: object, entry_point: object) -> None:
    """Raise TypeError/ValueError for a request the sandbox cannot run (not for a bad program)."""
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, not {type(program).__name__}")
    if isinstance(tests, str) or not isinstance(tests, Sequence) or not all(isinstance(t, str) for t in tests):
        raise TypeError("tests must be a sequence of str")
    if entry_point is not None and (not isinstance(entry_point, str) or not entry_point.isidentifier()):
        raise ValueError(f"entry_point must be an identifier or None, not {entry_point!r}")


class Sandbox:
    """One zygote; runs one program at a time (thread-safe). Restarts a dead zygote."""

    def __init__(self, limits: Limits | None = None, isolation: Isolation | None = None) -> None:
        self.limits = limits or Limits()
        self.isolation_config = isolation or Isolation()
        self.isolation: dict = {}
        """What the running zygote achieved (netns, mountns, pidns, uid, seccomp, ...)."""
        self._proc = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def missing_layers(self) -> list[str]:
        """The kernel layers a strict sandbox needs that the running zygote lacks (empty: strict)."""
        return missing_layers(self.isolation)

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

    def run(self, program: str, tests: Sequence[str] = (), limits: Limits | None = None,
            entry_point: str | None = None) -> RunResult:
        """Run ``program``, then each test against it in the harness process; never raises for a
        misbehaving program (TypeError/ValueError for arguments that are not a program and tests).

        A zygote that dies during the run (or whose supervisor fails on it) is replaced and the run
        repeated once; a second death is the program's doing: status ``crashed_sandbox``, a failure.
        ``error`` is left for a sandbox that fails by itself (a zygote that cannot start)."""
        check_job(program, tests, entry_point)
        limits = limits or self.limits
        header = {"entry_point": entry_point, "limits": asdict(limits)}
        with self._lock:
            crashes = []
            for _ in range(2):
                try:
                    return self._run_once(header, program, tests, limits)
                except SandboxUnavailable as exc:
                    return RunResult(status="unavailable", message=str(exc))
                except SandboxError as exc:
                    return RunResult(status="error", message=f"sandbox failure: {exc}")
                except _ZygoteLost as exc:
                    crashes.append(str(exc))
            return RunResult(status="crashed_sandbox",
                             message=f"the run ended its sandbox twice, each time on a fresh one: {crashes[-1]}"[:2000])

    def _run_once(self, header: dict, program: str, tests: Sequence[str], limits: Limits) -> RunResult:
        if self._proc is not None and self._proc.poll() is not None:
            self._kill()  # died since the last run: start a fresh one
        if self._proc is None:
            self._spawn()
        fd = self._socket.fileno()
        try:
            write_request(fd, header, program, list(tests))
            # The zygote enforces the timeout; this margin only catches a wedged zygote.
            reply = read_frame(fd, time.monotonic() + limits.timeout_s + 10)
            if "supervisor_error" in reply:
                raise SandboxError(f"its supervisor failed: {str(reply['supervisor_error'])[-500:]}")
            restart = reply.pop("restart", False)
            result = RunResult.from_dict(reply)
        except (OSError, SandboxError, TimeoutError, ValueError, TypeError) as exc:
            self._kill()
            raise _ZygoteLost(f"{type(exc).__name__}: {exc}") from None
        if restart:  # it could not clean up after this run: the next one gets a fresh zygote
            self._kill()
        return result

    def _spawn(self) -> None:
        config = json.dumps(asdict(self.isolation_config) | {"seccomp_module": seccomp_module_path()})
        env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
        # A socket, not pipes: a pipe of this process could be opened anew through
        # /proc/<pid>/fd/<n> by a program allowed to look there; a socket cannot be.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _ZYGOTE, "--zygote", config],
                stdin=theirs.fileno(), stdout=theirs.fileno(), env=env, cwd="/",
                start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            ours.close()
            raise SandboxError(f"zygote did not start: {exc!r}") from exc
        finally:
            theirs.close()
        self._socket = ours
        try:
            ready = read_frame(ours.fileno(), time.monotonic() + 30)
        except (OSError, SandboxError, TimeoutError, ValueError) as exc:
            self._kill()
            raise SandboxError(f"zygote did not start: {exc!r}") from exc
        if "error" in ready:
            self._kill()
            if self.isolation_config.strict:  # the traceback's last line: what this machine refused
                reason = (str(ready["error"]).strip().splitlines() or ["?"])[-1]
                raise SandboxUnavailable(f"the strict sandbox cannot be set up here: {reason}")
            raise SandboxError(f"zygote setup failed: {ready['error']}")
        self.isolation = ready["isolation"]
        if self.isolation_config.strict and self.missing_layers:
            self._kill()
            raise SandboxUnavailable("the strict sandbox needs " + "; ".join(self.missing_layers))
        if self.isolation["uid"] is None:  # weak mode only: programs share this process's uid
            self.isolation["service_nondumpable"] = _make_nondumpable()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        if proc is None:
            return
        try:
            proc.wait(timeout=2)  # EOF on its socket makes a healthy zygote exit
        except Exception:  # noqa: BLE001 - any failure here means: kill it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()


class _ZygoteLost(Exception):
    """The zygote died, wedged, or failed to supervise the run it was given."""


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
        self.unavailable: SandboxUnavailable | None = None
        """Set by ``start`` when ``Isolation.strict`` cannot be met here (what is missing, and why)."""

    def start(self) -> None:
        """Start the zygotes in parallel. A failure surfaces as ``error`` results later, except that
        a strict sandbox this machine cannot provide is kept in ``unavailable``."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="sandbox")
            failures = list(self._executor.map(_try_start, self.sandboxes))
            self.unavailable = next((f for f in failures if isinstance(f, SandboxUnavailable)), None)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for sandbox in self.sandboxes:
            sandbox.close()

    @property
    def isolation(self) -> dict:
        return self.sandboxes[0].isolation

    @property
    def missing_layers(self) -> list[str]:
        return self.sandboxes[0].missing_layers

    def run(self, job: Job, limits: Limits | None = None, deadline: float | None = None) -> RunResult:
        """Run ``job`` on the next free zygote; status ``deadline`` (not run) if none was free before
        ``deadline`` (Unix time)."""
        sandbox = self._free.get()
        try:
            if deadline is not None and time.time() >= deadline:
                return RunResult(status="deadline", message="not run: the request's deadline had passed")
            return sandbox.run(job.program, job.tests, limits, job.entry_point)
        finally:
            self._free.put(sandbox)

    def run_many(self, jobs: Sequence[Job], limits: Limits | None = None,
                 deadline: float | None = None) -> list[RunResult]:
        self.start()
        return list(self._executor.map(lambda job: self.run(job, limits, deadline), jobs))


def seccomp_module_path() -> str | None:
    """Where pyseccomp is installed: the zygote runs with ``-I -S`` (no site-packages) and loads it by path."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pyseccomp")
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def missing_layers(isolation: dict) -> list[str]:
    """What a strict sandbox needs that a zygote reporting ``isolation`` lacks, in words."""
    missing = [what for key, what in _STRICT_LAYERS.items() if not isolation.get(key)]
    if isolation.get("uid") is None:
        missing.insert(0, "its own uids for the programs (run as root, with Isolation.drop_privileges)")
    if not isolation.get("seccomp"):
        missing.append(f"the seccomp filter ({isolation.get('seccomp_error') or 'not loaded'})")
    return missing


_STRICT_LAYERS = {
    "netns": "a network namespace (CAP_SYS_ADMIN)",
    "mountns": "a mount namespace (CAP_SYS_ADMIN, mounts allowed by seccomp/AppArmor)",
    "pidns": "a PID namespace (CAP_SYS_ADMIN)",
    "minimal_root": "the minimal root filesystem (pivot_root into a tmpfs)",
}


def _make_nondumpable() -> bool:
    """PR_SET_DUMPABLE 0 for this (the service's) process: programs that run under its uid can then
    neither open its /proc/<pid>/mem, environ and fd/ nor attach to it. Only when they do share its
    uid (no root): it also keeps debuggers and core dumps away from the service."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False


def _try_start(sandbox: Sandbox) -> SandboxError | None:
    try:
        sandbox.start()
    except SandboxError as exc:
        return exc
    return None
