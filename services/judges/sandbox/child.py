"""The forked child: enter the sandbox, install the audit hook, run the program and tests.

Runs inside the zygote only. Like every module the zygote loads, it works both
as ``services.judges.sandbox.child`` and as a plain sibling (see ``zygote.py``).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

if __package__:
    from .protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, SANDBOX_PATH, Limits, cpu_limit_s
else:  # a plain sibling module inside the zygote
    from protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, SANDBOX_PATH, Limits, cpu_limit_s


def run_child(request: dict, limits: Limits, state: dict, workdir: str, fds: list[int], nonce: str,
              nproc: int) -> None:
    """In the forked child: enter the sandbox, run, report, ``_exit``. Never returns."""
    exit_code = EXIT_SETUP_FAILED
    try:
        _enter_sandbox(limits, state, workdir, fds, nproc)
        exit_code = 0
        _execute(request, nonce)
    except MemoryError:
        exit_code = EXIT_OUT_OF_MEMORY
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
    cpu = cpu_limit_s(limits)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu, SIGKILL at cpu + 1
    if state["uid"] is not None:
        os.setgroups([])
        os.setresgid(state["gid"], state["gid"], state["gid"])
        os.setresuid(state["uid"], state["uid"], state["uid"])
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(PATH=SANDBOX_PATH, HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8")
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
