"""Run untrusted Python under OS limits, fast: a fork server ("zygote") per slot.

The service never forks. ``Sandbox.start`` launches a helper interpreter
(``python -I -S`` this file, scrubbed environment, stdlib only, own session).
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
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 << 20
_EXIT_SETUP_FAILED = 71  # child could not enter the sandbox: infrastructure error
_EXIT_OUT_OF_MEMORY = 72  # MemoryError while reporting
_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Imported once by the zygote so children start with them loaded (copy-on-write).
_PRELOAD = (
    "abc array bisect cmath collections contextlib copy dataclasses datetime decimal enum "
    "fractions functools hashlib heapq itertools json math numbers operator random re "
    "statistics string struct textwrap time traceback types typing unicodedata linecache fcntl "
    "errno tempfile shutil"
).split()

STATUSES = ("ok", "exception", "timeout", "cpu", "memory", "file_size", "output_limit",
            "crashed", "exited", "error")


class SandboxError(RuntimeError):
    """The sandbox itself failed (zygote did not start, died, or spoke garbage)."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits. Exceeding one ends the run with the matching status."""

    timeout_s: float = 5.0
    """Wall clock; the process group is SIGKILLed at the deadline."""
    cpu_s: float | None = None
    """CPU seconds (RLIMIT_CPU, whole seconds, rounded up); default: timeout_s."""
    memory_mb: int = 512
    """Address space (RLIMIT_AS) per process; a memory bomb gets MemoryError."""
    max_processes: int = 16
    """Processes + threads (RLIMIT_NPROC) the program may have at once, itself included."""
    max_file_bytes: int = 1 << 20
    """Largest file the program may write (RLIMIT_FSIZE)."""
    max_output_bytes: int = 1 << 20
    """stdout + stderr beyond this kills the run (status ``output_limit``)."""
    output_tail_bytes: int = 4096
    """How much of the end of stdout and of stderr is returned."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or (self.cpu_s is not None and self.cpu_s <= 0):
            raise ValueError("timeout_s and cpu_s must be positive")
        if min(self.memory_mb, self.max_processes, self.max_file_bytes,
               self.max_output_bytes, self.output_tail_bytes) < 1:
            raise ValueError("limits must be positive")


@dataclass(frozen=True)
class Isolation:
    """How the zygote contains programs; defaults take the strongest the OS allows."""

    namespaces: bool = True
    """Try private network/mount/IPC namespaces (needs CAP_SYS_ADMIN)."""
    drop_privileges: bool = True
    """When root, run programs under an unprivileged uid claimed for this zygote."""
    uid: int | None = None
    """Fixed sandbox uid (and gid); default: the first free one from ``uid_base`` up."""
    uid_base: int = 60000
    """Start of the uid range zygotes claim from (one uid per zygote, via a lock file)."""
    tmpfs_mb: int = 64
    """Size of the private /tmp when namespaces are on (all runs' files share it)."""
    audit_hook: bool = True
    """Python-level policy in the child; off only to test the kernel layers on their own."""


@dataclass(frozen=True)
class RunResult:
    """What happened to one program. ``failed_test`` indexes ``tests``; None: the program."""

    status: str
    failed_test: int | None = None
    exc_type: str | None = None
    message: str = ""
    traceback: list[tuple[str, int, str]] = field(default_factory=list)
    """Frames in the sandboxed sources only: (``<program>``/``<test i>``, line number, line)."""
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    exit_code: int | None = None
    signal: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        frames = [tuple(f) for f in data.pop("traceback", [])]
        return cls(traceback=frames, **data)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One program and the test snippets run after it, in the same module namespace."""

    program: str
    tests: Sequence[str] = ()


# ============================================================== service side


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
                _write_frame(self._proc.stdin.fileno(), request)
                # The zygote enforces the timeout; this margin only catches a wedged zygote.
                reply = _read_frame(self._proc.stdout.fileno(), time.monotonic() + limits.timeout_s + 10)
                return RunResult.from_dict(reply)
            except (OSError, SandboxError, TimeoutError, ValueError, TypeError) as exc:
                self._kill()
                return RunResult(status="error", message=f"sandbox failure: {exc!r}")

    def _spawn(self) -> None:
        import subprocess  # service side only: the zygote must not have it loaded

        config = json.dumps(asdict(self.isolation_config))
        env = {"PATH": _SANDBOX_PATH, "LANG": "C.UTF-8"}
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "--zygote", config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
            start_new_session=True, close_fds=True,
        )
        try:
            ready = _read_frame(self._proc.stdout.fileno(), time.monotonic() + 30)
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
        import queue

        self.size = max(1, size or os.cpu_count() or 1)
        self.sandboxes = [Sandbox(limits, isolation) for _ in range(self.size)]
        self._free: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        for sandbox in self.sandboxes:
            self._free.put(sandbox)
        self._executor = None

    def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

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


# ============================================================== framing


def _write_frame(fd: int, obj: object) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait_s = deadline - time.monotonic()
            if wait_s <= 0 or not select.select([fd], [], [], wait_s)[0]:
                raise TimeoutError("no reply from the zygote")
        chunk = os.read(fd, left)
        if not chunk:
            raise SandboxError("zygote closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> dict:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > _MAX_FRAME:
        raise SandboxError(f"frame of {size} bytes")
    return json.loads(_read_exact(fd, size, deadline))


# ============================================================== zygote: bootstrap


def _bootstrap(config: dict) -> None:
    """Privileged one-time setup, then exec the serving zygote (drops ctypes)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    state = {"root": os.geteuid() == 0, "uid": None, "gid": None, "lock_fd": None, "audit_hook": config["audit_hook"],
             "netns": False, "mountns": False, "ro_root": False, "subreaper": False}
    if state["root"] and config["drop_privileges"]:
        state["uid"], state["lock_fd"] = _claim_uid(config)
        state["gid"] = state["uid"]
        _kill_uid(state["uid"])  # leftovers of a zygote that died holding this uid
    if config["namespaces"]:
        _enter_namespaces(libc, config, state)
    state["subreaper"] = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot elevate
    os.execv(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__),
                              "--serve", json.dumps(state)])


def _claim_uid(config: dict) -> tuple[int, int | None]:
    """A uid no other live zygote on this host uses (flock held for our lifetime)."""
    import fcntl
    import tempfile

    if config["uid"] is not None:
        return config["uid"], None
    lock_dir = os.path.join(tempfile.gettempdir(), "cgpo-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(config["uid_base"], config["uid_base"] + 4096):
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        return uid, fd
    raise SandboxError("no free sandbox uid")


def _enter_namespaces(libc, config: dict, state: dict) -> None:
    import ctypes

    clone_newns, clone_newnet, clone_newipc = 0x00020000, 0x40000000, 0x08000000
    if libc.unshare(clone_newns | clone_newnet | clone_newipc) != 0:
        return  # no CAP_SYS_ADMIN (container, not root): hooks cover network and files
    state["netns"] = True
    ms_nosuid, ms_nodev, ms_rec, ms_private = 2, 4, 1 << 14, 1 << 18
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        return
    state["mountns"] = True

    class MountAttr(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clr", "propagation", "userns_fd")]

    attr = MountAttr(1 | 2, 0, 0, 0)  # MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
    # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, ...): Linux >= 5.12, syscall 442 everywhere.
    state["ro_root"] = libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)) == 0
    options = f"size={config['tmpfs_mb']}m,nr_inodes=16384,mode=0755".encode()
    if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", ms_nosuid | ms_nodev, options) != 0:
        raise SandboxError(f"cannot mount a private /tmp (errno {ctypes.get_errno()}); "
                           "use Isolation(namespaces=False)")
    if not state["ro_root"]:  # old kernel: at least hide the other world-writable places
        for target in (b"/var/tmp", b"/dev/shm"):
            if os.path.isdir(target):
                libc.mount(b"tmpfs", target, b"tmpfs", ms_nosuid | ms_nodev, options)
    _expose_python(libc, ms_nosuid | ms_nodev)


def _expose_python(libc, flags: int) -> None:
    """Keep the interpreter, the stdlib and this file reachable under a closed dir (/root/.pyenv).

    The zygote re-execs itself and the sandbox uid imports stdlib modules, but a parent
    directory may be 0700. In our mount namespace only: a tmpfs (0755) over the outermost
    closed ancestor, with each needed path bound back at its own place.
    """
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))  # holds pyvenv.cfg
    needed = {venv, sys.prefix, sys.base_prefix, os.path.dirname(os.path.abspath(__file__))}
    needed |= {os.path.realpath(p) for p in needed}
    kept: dict[str, str] = {}  # needed path -> its outermost closed ancestor
    for path in sorted(needed):
        parts = path.split("/")
        ancestors = ("/".join(parts[:i]) for i in range(2, len(parts)))
        closed = next((a for a in ancestors if not os.stat(a).st_mode & 0o001), None)
        if closed is not None and not any(path.startswith(k + "/") for k in kept):
            kept[path] = closed
    ms_bind, ms_rec, ms_move = 4096, 1 << 14, 8192
    stashed = []
    for i, path in enumerate(kept):
        stash = f"/tmp/.expose-{i}"
        os.mkdir(stash)
        if libc.mount(path.encode(), stash.encode(), None, ms_bind | ms_rec, None) == 0:
            stashed.append((stash, path))
    for closed in sorted(set(kept.values()), key=len):
        if not any(closed.startswith(c + "/") for c in kept.values()):
            libc.mount(b"tmpfs", closed.encode(), b"tmpfs", flags, b"size=1m,mode=0755")
    for stash, path in stashed:
        os.makedirs(path, mode=0o755, exist_ok=True)
        libc.mount(stash.encode(), path.encode(), None, ms_move, None)
        os.rmdir(stash)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: kill(-1) from a helper that *is* that uid (root only)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(4):  # kill(-1) is atomic w.r.t. fork; repeat for stragglers
                os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


# ============================================================== zygote: serving


def _serve(state: dict) -> None:
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    isolation = {key: state[key] for key in ("root", "uid", "netns", "mountns", "ro_root", "subreaper", "audit_hook")}
    isolation["stdlib_readable"] = _stdlib_readable(state)
    _write_frame(1, {"isolation": isolation})
    while True:
        try:
            request = _read_frame(0)
        except SandboxError:  # the service went away
            return
        _write_frame(1, _run_one(request, state))


def _stdlib_readable(state: dict) -> bool:
    """Can the sandbox uid import modules the zygote did not preload?"""
    if state["uid"] is None:
        return True
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(state["gid"], state["gid"], state["gid"])
            os.setresuid(state["uid"], state["uid"], state["uid"])
            os.listdir(os.path.dirname(os.__file__))
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def _run_one(request: dict, state: dict) -> dict:
    limits = Limits(**request["limits"])
    workdir = _make_workdir(state)
    nonce = os.urandom(16).hex()
    # RLIMIT_NPROC counts every task of the real uid: without our own uid, allow the service's on top.
    nproc = limits.max_processes + (_user_tasks(os.getuid()) if state["uid"] is None else 0)
    pipes = [os.pipe() for _ in range(3)]  # result, stdout, stderr
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(request, limits, state, workdir, [w for _, w in pipes], nonce, nproc)
    for _, w in pipes:
        os.close(w)
    try:
        outcome = _watch(pid, limits, [r for r, _ in pipes], started, lambda: _sweep(state))
    finally:
        for r, _ in pipes:
            os.close(r)
        _reap_leftovers(pid, state)
        _remove_tree(workdir)
    return _judge_outcome(outcome, nonce, limits) | {"duration_s": round(time.monotonic() - started, 6)}


def _make_workdir(state: dict) -> str:
    import tempfile

    # With a mount namespace /tmp is our private tmpfs (root-owned 0755): only this dir is writable.
    path = tempfile.mkdtemp(prefix="run-", dir="/tmp" if state["mountns"] else None)
    if state["uid"] is not None:
        os.chown(path, state["uid"], state["gid"])
    return path


def _watch(pid: int, limits: Limits, fds: list[int], started: float, sweep) -> dict:
    """Collect the child's pipes until it exits or the deadline; kill its group on limits.

    After the child exits, descendants that left its group (setsid) may hold the pipes:
    ``sweep`` kills them if the pipes are still open a moment later.
    """
    result, outputs = bytearray(), [bytearray(), bytearray()]
    total_output, reason = 0, None
    deadline = started + limits.timeout_s
    poller = select.poll()
    names = {fd: i for i, fd in enumerate(fds)}
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    status, sweep_at = None, None
    open_fds = set(fds)
    try:
        while open_fds or status is None:
            if status is None:
                waited, raw, rusage = os.wait4(pid, os.WNOHANG)
                if waited:
                    status = (raw, rusage)
                    _kill_group(pid)  # descendants still holding our pipes
                    deadline = min(deadline, time.monotonic() + 1.0)
                    sweep_at = time.monotonic() + 0.02
                    if not open_fds:
                        break
            elif sweep_at is not None and time.monotonic() >= sweep_at:
                sweep()
                sweep_at = None
            wait_s = deadline - time.monotonic()
            if wait_s <= 0:
                reason = reason or ("timeout" if status is None else None)
                break
            events = poller.poll(min(wait_s, 0.05 if pidfd is None or sweep_at else wait_s) * 1000)
            for fd, _ in events:
                if fd == pidfd:
                    poller.unregister(pidfd)
                    continue
                data = os.read(fd, 65536)
                if not data:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif names[fd] == 0:
                    if len(result) < 1 << 20:
                        result += data
                else:
                    buf = outputs[names[fd] - 1]
                    buf += data
                    del buf[: max(0, len(buf) - limits.output_tail_bytes)]
                    total_output += len(data)
                    if total_output > limits.max_output_bytes and reason is None:
                        reason = "output_limit"
                        _kill_group(pid)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if status is None:
        _kill_group(pid)
        _, raw, rusage = os.wait4(pid, 0)
        status = (raw, rusage)
    raw, rusage = status
    return {"reason": reason, "raw_status": raw, "cpu_s": rusage.ru_utime + rusage.ru_stime,
            "result": bytes(result), "stdout": _text(outputs[0]), "stderr": _text(outputs[1])}


def _judge_outcome(outcome: dict, nonce: str, limits: Limits) -> dict:
    """Turn what the zygote saw into a RunResult dict; the child's own report wins if genuine."""
    raw = outcome["raw_status"]
    exit_code = os.waitstatus_to_exitcode(raw)
    sig = signal.Signals(-exit_code).name if exit_code < 0 else None
    base = {"stdout": outcome["stdout"], "stderr": outcome["stderr"], "duration_s": 0.0,
            "exit_code": exit_code if exit_code >= 0 else None, "signal": sig}
    report, last_stage = None, None
    for line in outcome["result"].splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and "stage" in message and "status" not in message:
            last_stage = message["stage"]
        elif isinstance(message, dict) and message.get("nonce") == nonce:
            report = message
    failed_test = last_stage - 1 if isinstance(last_stage, int) and last_stage > 0 else None
    cpu_limit = _cpu_limit_s(limits)
    if outcome["reason"] in ("timeout", "output_limit"):
        what = f"wall clock limit of {limits.timeout_s:g} s" if outcome["reason"] == "timeout" \
            else f"more than {limits.max_output_bytes} bytes of output"
        return base | {"status": outcome["reason"], "failed_test": failed_test, "message": f"killed: {what}"}
    if report is not None:
        report.pop("nonce")
        return base | report
    # SIGXCPU comes at the soft limit; SIGKILL at the hard one if the program ignored it.
    if sig == "SIGXCPU" or (sig == "SIGKILL" and outcome["cpu_s"] >= cpu_limit):
        return base | {"status": "cpu", "failed_test": failed_test,
                       "message": f"killed: CPU limit of {cpu_limit} s"}
    if exit_code == _EXIT_OUT_OF_MEMORY:
        return base | {"status": "memory", "failed_test": failed_test, "message": "out of memory"}
    if exit_code == _EXIT_SETUP_FAILED:
        return base | {"status": "error", "message": "could not enter the sandbox: " + outcome["stderr"][-500:]}
    if sig is not None:
        return base | {"status": "crashed", "failed_test": failed_test, "message": f"killed by {sig}"}
    return base | {"status": "exited", "failed_test": failed_test,
                   "message": f"exited with code {exit_code} before the tests finished"}


def _cpu_limit_s(limits: Limits) -> int:
    return max(1, int(-(-(limits.cpu_s or limits.timeout_s) // 1)))


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except OSError:
            pass


def _reap_leftovers(pid: int, state: dict) -> None:
    """Kill and reap every process the run left behind (including ones that called setsid)."""
    _kill_group(pid)
    deadline = time.monotonic() + 5.0
    swept = False
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # as subreaper, every surviving descendant would be our child
        if waited:
            continue
        _sweep(state)
        swept = True
        time.sleep(0.001)
    if state["uid"] is not None and (swept or not state["subreaper"]):
        _kill_uid(state["uid"])  # catches processes not reparented to us


def _sweep(state: dict) -> None:
    """Kill what escaped the group: all of the sandbox uid, else our (subreaper) children."""
    if state["uid"] is not None:
        _kill_uid(state["uid"])
    else:
        for child in _children_of(os.getpid()):
            _kill_group(child)


def _children_of(ppid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                children.append(int(entry))
    return children


def _remove_tree(path: str) -> None:
    import shutil

    def make_writable(func, failed_path, _exc):  # a program may chmod 000 its own files
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            func(failed_path)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable)


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


# ============================================================== child


_user_tasks_cache = [0.0, 0]


def _user_tasks(uid: int) -> int:
    """Tasks (processes + threads) of ``uid`` now — RLIMIT_NPROC counts them all. Cached 1 s."""
    now = time.monotonic()
    if now - _user_tasks_cache[0] > 1.0:
        count = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        count += len(os.listdir(f"/proc/{entry}/task"))
                except OSError:
                    continue
        _user_tasks_cache[:] = [now, count]
    return _user_tasks_cache[1]


def _child(request: dict, limits: Limits, state: dict, workdir: str, fds: list[int], nonce: str,
           nproc: int) -> None:
    """In the forked child: enter the sandbox, run, report, ``_exit``. Never returns."""
    exit_code = _EXIT_SETUP_FAILED
    try:
        _enter_sandbox(limits, state, workdir, fds, nproc)
        exit_code = 0
        _execute(request, nonce)
    except MemoryError:
        exit_code = _EXIT_OUT_OF_MEMORY
    except BaseException:  # noqa: BLE001 - report how setup failed, then exit
        try:
            import traceback

            os.write(2, traceback.format_exc()[-2000:].encode())
        except BaseException:  # noqa: BLE001
            pass
    os._exit(exit_code)


def _enter_sandbox(limits: Limits, state: dict, workdir: str, fds: list[int], nproc: int) -> None:
    import fcntl
    import tempfile

    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in [devnull, fds[1], fds[2], fds[0]]]
    for target, fd in enumerate(high):  # stdin=/dev/null, stdout, stderr, 3=result
        os.dup2(fd, target)
    os.closerange(4, 1 << 20)  # zygote control pipes, lock fd, everything else
    mb = limits.memory_mb << 20
    for which, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, mb),
                         (resource.RLIMIT_FSIZE, limits.max_file_bytes), (resource.RLIMIT_NPROC, nproc)):
        resource.setrlimit(which, (value, value))
    cpu = _cpu_limit_s(limits)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu, SIGKILL at cpu + 1
    if state["uid"] is not None:
        os.setgroups([])
        os.setresgid(state["gid"], state["gid"], state["gid"])
        os.setresuid(state["uid"], state["uid"], state["uid"])
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(PATH=_SANDBOX_PATH, HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8")
    tempfile.tempdir = workdir
    sys.argv = [""]
    if state["uid"] is None:
        # Same uid as the service: no raw process handles that bypass the hook's checks.
        for module, names in ((os, ("pidfd_open",)), (sys.modules.get("posix"), ("pidfd_open",)),
                              (signal, ("pidfd_send_signal",)), (sys.modules.get("_signal"), ("pidfd_send_signal",))):
            for name in names:
                if module is not None and hasattr(module, name):
                    delattr(module, name)
    if state["audit_hook"]:
        # Root keeping its uid is not bound by RLIMIT_NPROC: no fork at all then.
        sys.addaudithook(_audit_hook(workdir, allow_exec=state["uid"] is not None,
                                     allow_fork=state["uid"] is not None or not state["root"]))


def _audit_hook(workdir: str, allow_exec: bool, allow_fork: bool):
    """Python-level policy; the only barrier where the kernel ones are unavailable."""
    refused = {"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.call_function",
               "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
               "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
               "socket.gethostbyname", "socket.gethostbyaddr"}
    if not allow_exec:  # an exec'd binary would run without this hook
        refused |= {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "os.forkpty"}
    if not allow_fork:
        refused |= {"os.fork", "os.forkpty"}
    refused_imports = {"ctypes", "_ctypes", "_posixsubprocess", "subprocess"} if not allow_exec else {"ctypes", "_ctypes"}
    # event -> positions of the path arguments that must lie inside the working directory
    path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                   "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1),
                   "os.symlink": (1,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
                   "shutil.copyfile": (1,), "shutil.rmtree": (0,), "shutil.move": (0, 1)}
    watched = refused | set(path_events) | {"open", "import", "socket.__new__", "os.kill", "os.killpg"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    getpid, getpgrp, getpgid, realpath = os.getpid, os.getpgrp, os.getpgid, os.path.realpath
    workdir = realpath(workdir)  # paths are compared resolved (/tmp may be a symlink)
    root = workdir.rstrip("/") + "/"
    af_unix = 1  # socket.AF_UNIX on Linux; importing socket here would cost every run

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already-open fd
        full = realpath(os.fsdecode(path))
        return full == workdir or full.startswith(root) or full == os.devnull

    def refuse(what: str):
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event not in watched:
            return
        if event == "open":
            path, _mode, flags = args
            if isinstance(path, int) or path is None:
                return
            if flags & write_flags and not inside(path):
                refuse(f"writing {os.fsdecode(path)!r}")
            parts = realpath(os.fsdecode(path)).split("/", 3)
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != getpid():
                refuse(f"reading another process's {os.fsdecode(path)!r}")
        elif event == "import":
            if args[0] in refused_imports:
                refuse(f"importing {args[0]}")
        elif event == "socket.__new__":
            if args[1] != af_unix:
                refuse("network access")
        elif event == "os.kill":
            pid = args[0]
            own = pid in (0, getpid()) or (pid > 0 and _pgid_or_none(getpgid, pid) == getpgrp()) or -pid == getpgrp()
            if not own:
                refuse(f"signalling process {pid}")
        elif event == "os.killpg":
            if args[0] not in (0, getpgrp()):
                refuse(f"signalling process group {args[0]}")
        elif event in path_events:
            for position in path_events[event]:
                if not inside(args[position]):
                    refuse(f"{event} on {os.fsdecode(args[position])!r}")
        else:
            refuse(event)

    return hook


def _pgid_or_none(getpgid, pid: int) -> int | None:
    try:
        return getpgid(pid)
    except OSError:
        return None


def _execute(request: dict, nonce: str) -> None:
    """Exec the program then each test in one fresh ``__main__``; report on fd 3."""
    import linecache
    import traceback
    import types

    write, dumps, flush_streams = os.write, json.dumps, (sys.stdout.flush, sys.stderr.flush)
    sources = [("<program>", request["program"])] + [(f"<test {i}>", t) for i, t in enumerate(request["tests"])]
    lines = {name: source.splitlines() for name, source in sources}
    for name, source in sources:
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    report: dict = {"status": "ok"}
    for stage, (name, source) in enumerate(sources):
        write(3, dumps({"stage": stage}).encode() + b"\n")
        try:
            exec(compile(source, name, "exec", dont_inherit=True), module.__dict__)  # noqa: S102
        except MemoryError:
            module.__dict__.clear()
            report = {"status": "memory", "failed_test": stage - 1 if stage else None,
                      "exc_type": "MemoryError", "message": "out of memory"}
            break
        except BaseException as exc:  # noqa: BLE001 - the program's failure is the result
            report = _describe(exc, stage, lines, traceback)
            break
    for flush in flush_streams:
        try:
            flush()
        except BaseException:  # noqa: BLE001 - the program may have broken its streams
            pass
    write(3, dumps(report | {"nonce": nonce}).encode() + b"\n")


def _describe(exc: BaseException, stage: int, lines: dict, traceback) -> dict:
    """Exception -> report; prints a traceback limited to the sandboxed sources on stderr."""
    import errno

    def text(name: str, lineno: int | None) -> str:
        return lines[name][lineno - 1].strip() if lineno and 0 < lineno <= len(lines[name]) else ""

    frames = [(f.filename, f.lineno or 0, text(f.filename, f.lineno))
              for f in traceback.extract_tb(exc.__traceback__) if f.filename in lines]
    stack = "".join(f'  File "{f}", line {n}\n    {line}\n' for f, n, line in frames)
    if isinstance(exc, SyntaxError) and exc.filename in lines:  # its location is not a frame
        frames.append((exc.filename, exc.lineno or 0, (exc.text or "").strip()))
    status = "exception"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        status = "file_size"
    try:
        message = str(exc)[:2000]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        message = "<unprintable>"
    try:
        summary = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    except BaseException:  # noqa: BLE001
        summary = f"{type(exc).__name__}\n"
    try:
        sys.stderr.write(f"Traceback (most recent call last):\n{stack}{summary}" if stack else summary)
    except BaseException:  # noqa: BLE001
        pass
    return {"status": status, "failed_test": stage - 1 if stage else None,
            "exc_type": type(exc).__name__, "message": message, "traceback": frames[-20:]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        try:
            _bootstrap(json.loads(sys.argv[2]))
        except BaseException:  # noqa: BLE001 - tell the service why, then exit
            import traceback

            _write_frame(1, {"error": traceback.format_exc()[-1500:]})
            raise SystemExit(1) from None
    elif sys.argv[1:2] == ["--serve"]:
        _serve(json.loads(sys.argv[2]))
