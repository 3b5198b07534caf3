"""The zygote: privileged one-time setup, then a loop that serves one run per request.

``Sandbox`` launches this file as ``python -I -S zygote.py --zygote <config>``.
``_bootstrap`` claims two uids (program, harness), enters network, mount, IPC and
PID namespaces, pivots into the minimal root (``rootfs``), loads the seccomp
filter, then re-execs this file with ``--serve <state>`` (so no ctypes handle
survives into the children). With a PID namespace the bootstrap process forks
first: the child, pid 1 of the new namespace, becomes the serving zygote, and the
parent only waits for it (``Sandbox`` holds the parent; killing it kills the
zygote through PDEATHSIG, and the zygote's death empties its namespace). Standard
library only (pyseccomp is loaded by path); the modules the runs start with are
imported here, before any fork. No run can end the serving loop: a failure while
supervising one answers that run (``supervisor_error``) and the next is served.
"""

from __future__ import annotations

import gc
import json
import os
import sys

if __package__:  # imported as cgpo.services.judges.sandbox.zygote
    from . import syscalls
    from .cleanup import kill_uid
    from .confine import scrub_environment
    from .protocol import EXIT_SETUP_FAILED, SandboxError, read_frame, read_secret, write_frame
    from .supervisor import run_one
else:
    # Run as a script: python -I (3.11+: implies -P) leaves this directory off sys.path.
    # Add it just to import the siblings, so the programs' sys.path stays the stdlib's.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cleanup import kill_uid
    from confine import scrub_environment
    from protocol import EXIT_SETUP_FAILED, SandboxError, read_frame, read_secret, write_frame
    from supervisor import run_one

    import syscalls
    del sys.path[0]

# Imported once by the zygote so children start with them loaded (copy-on-write).
_PRELOAD = (
    "abc array bisect cmath collections contextlib copy dataclasses datetime decimal enum "
    "fractions functools hashlib heapq itertools json math numbers operator random re "
    "statistics string struct textwrap time traceback types typing unicodedata linecache fcntl "
    "errno tempfile shutil threading"
).split()
_CLONE_NEWNS, _CLONE_NEWNET, _CLONE_NEWIPC, _CLONE_NEWPID = 0x00020000, 0x40000000, 0x08000000, 0x20000000
_MS_REC, _MS_PRIVATE = 1 << 14, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38


# ============================================================== bootstrap


def _bootstrap(config: dict) -> None:
    """Privileged one-time setup, then exec the serving zygote (drops ctypes)."""
    import ctypes

    seccomp, seccomp_error = _import_pyseccomp(config)
    libc = ctypes.CDLL(None, use_errno=True)
    state = {"root": os.geteuid() == 0, "uid": None, "harness_uid": None, "audit_hook": config["audit_hook"],
             "netns": False, "mountns": False, "pidns": False, "minimal_root": False, "ro_root": False,
             "proc_hidepid": False, "hidden_sockets": 0, "subreaper": False, "seccomp": False,
             "seccomp_error": seccomp_error}
    if state["root"] and config["drop_privileges"]:
        state["uid"], state["harness_uid"] = _claim_uids(config)
        kill_uid(state["uid"])  # leftovers of a zygote that died holding these uids
        kill_uid(state["harness_uid"])
    sockets = _host_unix_sockets() if config["namespaces"] else []  # before leaving the host's netns
    if config["namespaces"] and libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC) == 0:
        state["netns"] = True
        state["mountns"] = libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
        state["pidns"] = state["mountns"] and libc.unshare(_CLONE_NEWPID) == 0
    if state["pidns"]:
        _become_namespace_init(libc)
    if state["mountns"]:
        uids = [uid for uid in (state["uid"], state["harness_uid"]) if uid is not None]
        state |= _sibling("rootfs").build(libc, uids, config["tmpfs_mb"], sockets)
    state["subreaper"] = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot elevate; required by seccomp
    if seccomp is not None:
        try:
            state["seccomp_unknown"] = syscalls.load(seccomp)
            state["seccomp"] = True
        except Exception as exc:  # noqa: BLE001 - OSError from the kernel, or a pyseccomp that differs
            state["seccomp_error"] = f"cannot load the filter: {type(exc).__name__}: {exc}"[:300]
    os.execv(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__), "--serve", json.dumps(state)])


def _sibling(name: str):
    """A module of this package imported here only (``rootfs`` holds ctypes: never in the serving zygote)."""
    if __package__:
        import importlib

        return importlib.import_module(f"{__package__}.{name}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        return __import__(name)
    finally:
        del sys.path[0]


def _import_pyseccomp(config: dict):
    """(pyseccomp, None) loaded from the path the service found, or (None, why not)."""
    import importlib.util

    if not config.get("seccomp", True):
        return None, "disabled (Isolation.seccomp=False)"
    path = config.get("seccomp_module")
    if not path:
        return None, "pyseccomp is not installed"
    try:
        spec = importlib.util.spec_from_file_location("pyseccomp", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module, None
    except Exception as exc:  # noqa: BLE001 - e.g. RuntimeError: libseccomp is missing
        return None, f"cannot load pyseccomp: {type(exc).__name__}: {exc}"[:300]


def _claim_uids(config: dict) -> tuple[int, int]:
    """Two uids no other live zygote on this host uses (one flock per uid, held for our lifetime)."""
    import fcntl
    import tempfile

    if config["uid"] is not None:
        return config["uid"], config["uid"] + 1
    lock_dir = os.path.join(tempfile.gettempdir(), "cgpo-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    held: list[tuple[int, int]] = []
    for uid in range(config["uid_base"], config["uid_base"] + 4096):
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        held.append((uid, fd))
        if len(held) == 2:
            return held[0][0], held[1][0]
    raise SandboxError("no two free sandbox uids")


def _host_unix_sockets() -> list[str]:
    """Paths of the Unix sockets bound in the host's network namespace (/proc/net/unix)."""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    paths = {row.split(None, 7)[7] for row in rows if len(row.split(None, 7)) == 8}
    return sorted(p for p in paths if p.startswith("/"))[:4096]


def _become_namespace_init(libc) -> None:
    """Fork: the child is pid 1 of the new PID namespace and returns; the parent waits for it."""
    pid = os.fork()
    if pid == 0:
        libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL when the parent (what Sandbox holds) dies
        os.setsid()  # a group of its own, visible (pgid 1) inside the namespace
        return
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the zygote alone holds the service's socket: its death is an EOF there
    os.dup2(null, 1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


# ============================================================== serving


def _serve(state: dict) -> None:
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    state["nondumpable"] = _make_nondumpable()
    scrub_environment()
    gc.freeze()  # inherited objects stay out of the runs' collections: fewer copy-on-write faults
    isolation = {key: state[key] for key in (
        "root", "uid", "harness_uid", "netns", "mountns", "pidns", "minimal_root", "ro_root", "proc_hidepid",
        "hidden_sockets", "seccomp", "seccomp_error", "subreaper", "audit_hook", "nondumpable")}
    isolation["stdlib_readable"] = _stdlib_readable(state)
    state["wakeup_fd"] = _wake_on_child_exit()
    write_frame(1, {"isolation": isolation})
    zygote = os.getpid()
    while True:
        try:
            request = read_frame(0)
            program = read_secret(0, request.pop("program_bytes"))
            tests = read_secret(0, request.pop("tests_bytes"))
        except SandboxError:  # the service went away
            return
        try:
            reply = run_one(request, program, tests, state)
        except BaseException:  # noqa: BLE001 - whatever a run provoked here ends that run, not the zygote
            if os.getpid() != zygote:  # a run's process that fell through to here: never a second zygote
                os._exit(EXIT_SETUP_FAILED)
            import traceback

            reply = {"supervisor_error": traceback.format_exc()[-1500:]}
        write_frame(1, reply)


def _wake_on_child_exit() -> int:
    """A pipe that receives a byte whenever a child ends (SIGCHLD, ``signal.set_wakeup_fd``): what the
    supervisor polls for its processes' ends. Not pidfds: the seccomp filter, which the zygote runs
    under too, denies pidfd_open. Every run's process resets both before its own code runs."""
    import signal

    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    return read_fd


def _make_nondumpable() -> bool:
    """PR_SET_DUMPABLE 0 for the zygote, and so for every run's processes from their first
    instruction: with the program's uid (no root), the harness's memory (/proc/<pid>/mem) and
    descriptors (/proc/<pid>/fd) are out of reach. ctypes is dropped again afterwards."""
    import ctypes

    try:
        return ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    finally:
        for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
            del sys.modules[name]
        del ctypes
        gc.collect()


def _stdlib_readable(state: dict) -> bool:
    """Can the sandbox uids import modules the zygote did not preload?"""
    if state["uid"] is None:
        return True
    for uid in (state["uid"], state["harness_uid"]):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.listdir(os.path.dirname(os.__file__))
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        if os.waitpid(pid, 0)[1] != 0:
            return False
    return True


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        try:
            _bootstrap(json.loads(sys.argv[2]))
        except BaseException:  # noqa: BLE001 - tell the service why, then exit
            import traceback

            write_frame(1, {"error": traceback.format_exc()[-1500:]})
            raise SystemExit(1) from None
    elif sys.argv[1:2] == ["--serve"]:
        _serve(json.loads(sys.argv[2]))
