"""Entering the sandbox, for both processes of a run: descriptors, rlimits, uid, environment, audit hook.

Runs inside the zygote only, in a freshly forked process, before any code that
is not ours. Like every module the zygote loads, it works both as
``cgpo.services.judges.sandbox.confine`` and as a plain sibling (see ``zygote.py``).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import sys

if __package__:
    from .protocol import SANDBOX_PATH, Limits, cpu_limit_s
else:  # a plain sibling module inside the zygote
    from protocol import SANDBOX_PATH, Limits, cpu_limit_s


ENVIRONMENT = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
"""The zygote's whole environment; a sandboxed process adds HOME and TMPDIR (its own directory)."""


def scrub_environment() -> None:
    """Once, in the zygote: nothing of the service's environment reaches a run."""
    os.environ.clear()
    os.environ.update(ENVIRONMENT)


def reset_signals() -> None:
    """Start from the signal state of a fresh Python process, whatever the service's threads had: no
    signal blocked (a mask is inherited through fork and exec), none ignored but the two Python itself
    ignores (SIGPIPE, SIGXFSZ). A program killed by a signal must be judged as killed."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    python_ignores = {signal.SIGPIPE, signal.SIGXFSZ}
    for number in signal.valid_signals():
        if number not in python_ignores and signal.getsignal(number) == signal.SIG_IGN:
            try:
                signal.signal(number, signal.SIG_DFL)
            except (OSError, ValueError):  # glibc keeps 32 and 33 for itself
                pass


def enter(limits: Limits, fds: list[int], *, uid: int | None, workdir: str, home: str, nproc: int,
          audit_hook: bool, allow_exec: bool, allow_fork: bool) -> None:
    """Make ``fds`` the process's descriptors 0, 1, 2, ... (closing every other one), start a
    session, apply the rlimits, drop to ``uid`` (gid = uid) when given, chdir to ``home`` and
    scrub the environment; then install the audit hook (writes allowed only in ``workdir``)."""
    import fcntl
    import tempfile

    signal.set_wakeup_fd(-1)  # the zygote's SIGCHLD pipe and handler are not this process's
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    reset_signals()
    os.setsid()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # dup2 clears close-on-exec: these few survive an exec
    os.closerange(len(fds), 1 << 20)  # the zygote's socket, the other process's ends, lock fds
    mb = limits.memory_mb << 20
    for which, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, mb),
                         (resource.RLIMIT_FSIZE, limits.max_file_bytes), (resource.RLIMIT_NPROC, nproc)):
        resource.setrlimit(which, (value, value))
    cpu = cpu_limit_s(limits)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu, SIGKILL at cpu + 1
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    os.chdir(home)
    if os.environ.keys() != ENVIRONMENT.keys():  # scrub_environment ran in the zygote: rarely taken
        os.environ.clear()
        os.environ.update(ENVIRONMENT)
    os.environ.update(HOME=home, TMPDIR=home)
    tempfile.tempdir = home
    sys.argv = [""]
    if uid is None:
        # Same uid as the service: no raw process handles that bypass the hook's checks (the seccomp
        # filter denies these syscalls anyway; this is for a sandbox without one). The hook refuses
        # re-importing _signal and posix, which would bring them back.
        for module, names in ((os, ("pidfd_open",)), (sys.modules.get("posix"), ("pidfd_open",)),
                              (signal, ("pidfd_send_signal",)), (sys.modules.get("_signal"), ("pidfd_send_signal",))):
            for name in names:
                if module is not None and hasattr(module, name):
                    delattr(module, name)
    if audit_hook:
        sys.addaudithook(_audit_hook(workdir, allow_exec=allow_exec, allow_fork=allow_fork))


_REFUSED = frozenset({
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.call_function",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
    "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr"})
_RAW_MEMORY = frozenset({"mem", "pagemap", "map_files"})
_EXEC_EVENTS = frozenset({"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "os.forkpty"})
_FORK_EVENTS = frozenset({"os.fork", "os.forkpty"})
# Builtin modules whose functions ``enter`` deletes: loaded before any run, so an import event for
# one is a re-import meant to get them back. (importlib can still re-create a builtin module without
# that event; the seccomp filter denies the syscalls behind those functions in any case.)
_NOT_REIMPORTED = frozenset({"_signal", "posix"})
# event -> (position of a path that must lie inside the working directory, position of its dir_fd)
_PATH_EVENTS = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
                "os.rename": ((0, 2), (1, 3)), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
                "os.chown": ((0, 3),), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
                "os.utime": ((0, 3),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),),
                "shutil.copyfile": ((1, None),), "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None))}


def _audit_hook(workdir: str, allow_exec: bool, allow_fork: bool):
    """Python-level policy; the only barrier where the kernel ones are unavailable.

    Paths are checked where the kernel would find them: against ``dir_fd`` when the event names
    one, else against the working directory and — since the ``open`` event does not say which
    descriptor ``os.open(..., dir_fd=)`` used — against every directory this process has open;
    every component resolved as the kernel would (``_locate``). Best effort all the same: a
    determined program can race a check (swap a link between it and the open) or find other ways
    around a Python-level hook.
    """
    refused = _REFUSED | (frozenset() if allow_exec else _EXEC_EVENTS) | (frozenset() if allow_fork else _FORK_EVENTS)
    # Without exec an exec'd binary would run without this hook: no way to spawn one either.
    refused_imports = {"ctypes", "_ctypes"} if allow_exec else {"ctypes", "_ctypes", "_posixsubprocess", "subprocess"}
    refused_imports |= _NOT_REIMPORTED
    path_events = _PATH_EVENTS
    watched = refused | _PATH_EVENTS.keys() | {"open", "import", "socket.__new__", "os.kill", "os.killpg",
                                               "resource.prlimit"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    getpid, getpgrp, getpgid = os.getpid, os.getpgrp, os.getpgid
    fsdecode, isabs, join, getcwd, readlink = os.fsdecode, os.path.isabs, os.path.join, os.getcwd, os.readlink
    workdir = os.path.realpath(workdir)  # paths are compared resolved (/tmp may be a symlink)
    root = workdir.rstrip("/") + "/"
    af_unix = 1  # socket.AF_UNIX on Linux; importing socket here would cost every run

    def resolved(path, dir_fd: int | None) -> list[str]:
        """Every file ``path`` may name (OSError: cannot tell; PermissionError: a way through another
        process's /proc). ``dir_fd`` None: unknown, any open directory may be the base; negative:
        the working directory."""
        text = fsdecode(path)
        if isabs(text):
            bases = [""]
        elif dir_fd is not None and dir_fd >= 0:
            bases = [readlink(f"/proc/self/fd/{dir_fd}")]
        else:
            bases = [getcwd(), *(_open_directories() if dir_fd is None else ())]
        return [_locate(join(base, text) if base else text, getpid()) for base in bases]

    def inside(full: str) -> bool:
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
            try:
                candidates = resolved(path, None)
            except PermissionError:
                raise
            except OSError:
                refuse(f"opening {fsdecode(path)!r} (cannot tell where it is)")
            if flags & write_flags and not all(inside(full) for full in candidates):
                refuse(f"writing {fsdecode(path)!r}")
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
        elif event == "resource.prlimit":
            if args[0] not in (0, getpid()):
                refuse(f"changing the limits of process {args[0]}")
        elif event in path_events:
            for position, dir_fd_position in path_events[event]:
                path = args[position]
                if isinstance(path, int):
                    continue  # an already-open fd
                dir_fd = args[dir_fd_position] if dir_fd_position is not None else -1
                try:
                    candidates = resolved(path, -1 if dir_fd is None else dir_fd)
                except PermissionError:
                    raise
                except OSError:
                    refuse(f"{event} on {fsdecode(path)!r} (cannot tell where it is)")
                if not all(inside(full) for full in candidates):
                    refuse(f"{event} on {fsdecode(path)!r}")
        else:
            refuse(event)

    return hook


def _locate(path: str, pid: int) -> str:
    """Where the kernel would find ``path`` (absolute), resolved one component at a time.

    Every directory passed through is checked, not only the end: /proc/<pid>/fd/<n> of another
    process resolves to wherever that descriptor points (/dev/null, a socket), so only the way
    there shows that it goes through another process's /proc entry (PermissionError). Links are
    followed as the kernel follows them, a dangling one included (opening it with O_CREAT creates
    its target). OSError where that cannot be told: a link loop, a component Python cannot look at.
    """
    if len(path) >= 4096:
        raise OSError(errno.ENAMETOOLONG, "path too long to check")
    resolved, pending, links = "", path.split("/"), 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = resolved.rsplit("/", 1)[0]
            continue
        candidate = f"{resolved}/{name}"
        _check_proc(candidate, pid)
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            return "/".join([candidate, *pending])  # from here on the kernel finds nothing either
        if not stat.S_ISLNK(mode):
            resolved = candidate
            continue
        links += 1
        if links > 40:
            raise OSError(errno.ELOOP, "too many links")
        target = os.readlink(candidate)
        pending[:0] = target.split("/")
        if target.startswith("/"):
            resolved = ""
    return resolved or "/"


def _check_proc(path: str, pid: int) -> None:
    """No way through another process's /proc entry; none into this one's raw memory (it holds
    what the zygote left in freed blocks: earlier runs' programs and outputs)."""
    parts = path.split("/", 4)
    if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit():
        if int(parts[2]) != pid:
            raise PermissionError(f"sandbox: reaching another process's {path!r} is not allowed")
        if len(parts) > 3 and parts[3] in _RAW_MEMORY:
            raise PermissionError(f"sandbox: reading {path!r} is not allowed")


def _open_directories() -> list[str]:
    """Where this process's open directory descriptors point (possible ``dir_fd`` bases). None known
    without a /proc (a minimal root where the kernel refused one: nothing to escape to there)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        try:
            if stat.S_ISDIR(os.fstat(int(name)).st_mode):
                found.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue  # the descriptor listdir itself used, closed by now
    return found


def _pgid_or_none(getpgid, pid: int) -> int | None:
    try:
        return getpgid(pid)
    except OSError:
        return None
