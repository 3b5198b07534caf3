"""One run, from the zygote's side: fork the child, watch its pipes and limits, judge, clean up.

Runs inside the zygote only. Like every module the zygote loads, it works both
as ``services.judges.sandbox.supervisor`` and as a plain sibling (see ``zygote.py``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import time

if __package__:
    from .child import run_child
    from .protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, Limits, cpu_limit_s
else:  # a plain sibling module inside the zygote
    from child import run_child
    from protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, Limits, cpu_limit_s


def run_one(request: dict, state: dict) -> dict:
    """One request frame in, one ``RunResult`` dict out; never leaves a process or file behind."""
    limits = Limits(**request["limits"])
    workdir = _make_workdir(state)
    nonce = os.urandom(16).hex()
    # RLIMIT_NPROC counts every task of the real uid: without our own uid, allow the service's on top.
    nproc = limits.max_processes + (_user_tasks(os.getuid()) if state["uid"] is None else 0)
    pipes = [os.pipe() for _ in range(3)]  # result, stdout, stderr
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        run_child(request, limits, state, workdir, [w for _, w in pipes], nonce, nproc)
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
    cpu_limit = cpu_limit_s(limits)
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
    if exit_code == EXIT_OUT_OF_MEMORY:
        return base | {"status": "memory", "failed_test": failed_test, "message": "out of memory"}
    if exit_code == EXIT_SETUP_FAILED:
        return base | {"status": "error", "message": "could not enter the sandbox: " + outcome["stderr"][-500:]}
    if sig is not None:
        return base | {"status": "crashed", "failed_test": failed_test, "message": f"killed by {sig}"}
    return base | {"status": "exited", "failed_test": failed_test,
                   "message": f"exited with code {exit_code} before the tests finished"}


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
        kill_uid(state["uid"])  # catches processes not reparented to us


def _sweep(state: dict) -> None:
    """Kill what escaped the group: all of the sandbox uid, else our (subreaper) children."""
    if state["uid"] is not None:
        kill_uid(state["uid"])
    else:
        for child in _children_of(os.getpid()):
            _kill_group(child)


def kill_uid(uid: int) -> None:
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
