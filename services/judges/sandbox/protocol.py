"""What the service and its zygotes share: the frames on their socket and the types in them.

Standard library only, and no imports from this package: the zygote loads this
file as a plain sibling module (see ``zygote.py``), the service as
``cgpo.services.judges.sandbox.protocol``. One frame is a 4-byte big-endian length
and that many bytes of JSON. In: a request frame (entry point, ``Limits``, two
sizes) followed by the program (UTF-8) and the tests (a JSON list) as raw bytes
(``write_request`` / ``read_secret``); out: a ``RunResult`` dict (with ``restart``
when the zygote could not clean up after the run), or ``supervisor_error`` when
supervising the run failed. The zygote's first frame reports its isolation (or
why setup failed). (The channel between
the two processes of a run is ``wire``.)
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from dataclasses import asdict, dataclass, field

_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 << 20
EXIT_SETUP_FAILED = 71  # a run's process could not enter the sandbox: infrastructure error
EXIT_OUT_OF_MEMORY = 72  # MemoryError while reporting
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

STATUSES = ("ok", "exception", "timeout", "cpu", "memory", "file_size", "output_limit",
            "crashed", "exited", "missing_function", "crashed_sandbox", "error", "unavailable", "deadline")
"""``crashed_sandbox``: the run killed its zygote twice, on two fresh zygotes (the program's doing);
``error``: the sandbox failed by itself; ``unavailable``: a strict sandbox cannot be built here."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (zygote did not start, died, or spoke garbage)."""


class SandboxUnavailable(SandboxError):
    """A strict sandbox was asked for and this machine cannot provide one (see ``Isolation.strict``)."""


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


def cpu_limit_s(limits: Limits) -> int:
    """The RLIMIT_CPU the child gets: ``cpu_s`` (default ``timeout_s``) in whole seconds, rounded up."""
    return max(1, int(-(-(limits.cpu_s or limits.timeout_s) // 1)))


@dataclass(frozen=True)
class Isolation:
    """How the zygote contains programs; defaults take the strongest the OS allows."""

    namespaces: bool = True
    """Try private network, mount, IPC and PID namespaces (needs CAP_SYS_ADMIN): read-only root,
    private /tmp, host socket directories hidden, a /proc showing only the run's own processes."""
    drop_privileges: bool = True
    """When root, run programs and the test harness under two unprivileged uids claimed for this zygote."""
    uid: int | None = None
    """Fixed program uid (and gid); the harness gets ``uid + 1``. Default: the first two free
    uids from ``uid_base`` up."""
    uid_base: int = 60000
    """Start of the uid range zygotes claim from (two uids per zygote, one lock file each)."""
    tmpfs_mb: int = 64
    """Size of the private /tmp when namespaces are on (all runs' files share it)."""
    audit_hook: bool = True
    """Python-level policy in both processes of a run; off only to test the kernel layers on their own."""
    seccomp: bool = True
    """Load the seccomp filter (needs pyseccomp and libseccomp; reported in ``Sandbox.isolation``)."""
    strict: bool = False
    """Run programs only when every kernel layer is in place (a uid of their own, network, mount and
    PID namespaces, the minimal root, seccomp); otherwise every run answers ``unavailable``."""

    def __post_init__(self) -> None:
        if self.uid is not None and not 0 < self.uid < (1 << 31) - 1:
            raise ValueError("uid must be a positive uid below 2**31 - 1 (the harness gets uid + 1)")
        if self.uid_base <= 0 or self.tmpfs_mb < 1:
            raise ValueError("uid_base and tmpfs_mb must be positive")


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
    bad_test: bool = False
    """The test ``failed_test`` itself does not compile: the dataset's fault, not the program's."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        frames = [tuple(f) for f in data.pop("traceback", [])]
        return cls(traceback=frames, **data)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return asdict(self)


def write_frame(fd: int, obj: object) -> None:
    data = json.dumps(obj).encode()
    _write_all(fd, _HEADER.pack(len(data)) + data)


def write_request(fd: int, header: dict, program: str, tests: list[str]) -> None:
    """One run: a frame with the limits, the entry point and two sizes, then the program and the tests
    (a JSON list) as raw bytes, which the zygote reads into buffers it wipes (``read_secret``)."""
    program_data = program.encode("utf-8", "surrogatepass")
    tests_data = json.dumps(tests).encode()
    frame = json.dumps(header | {"program_bytes": len(program_data), "tests_bytes": len(tests_data)}).encode()
    _write_all(fd, _HEADER.pack(len(frame)) + frame + program_data + tests_data)


def read_secret(fd: int, size: int) -> bytearray:
    """``size`` bytes read straight into a new bytearray: the only copy in this process, so
    ``wipe`` really removes them (the tests must not be in the memory a program is forked from)."""
    if type(size) is not int or not 0 <= size <= _MAX_FRAME:
        raise SandboxError(f"bad size {size!r}")
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = os.readv(fd, [view[got:]])
        if count == 0:
            raise SandboxError("the socket closed inside a request")
        got += count
    view.release()
    return buffer


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))  # same length: overwritten in place


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int, deadline: float | None = None) -> dict:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > _MAX_FRAME:
        raise SandboxError(f"frame of {size} bytes")
    return json.loads(_read_exact(fd, size, deadline))


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait_s = deadline - time.monotonic()
            if wait_s <= 0 or not select.select([fd], [], [], wait_s)[0]:
                raise TimeoutError("no reply from the zygote")
        chunk = os.read(fd, left)
        if not chunk:
            raise SandboxError("zygote closed its socket")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
