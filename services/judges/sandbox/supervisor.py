"""One run, from the zygote's side: fork the harness and the program, watch them, judge, clean up.

Runs inside the zygote only. Like every module the zygote loads, it works both
as ``cgpo.services.judges.sandbox.supervisor`` and as a plain sibling (see ``zygote.py``).

The harness is forked first and gets the only write end of the report channel;
the channel's other ends are closed here before the program process is forked, so
it never holds them. The verdict comes from the harness's report and from what
this process sees itself (deadline, output volume, how each process ended) —
never from anything the program writes. The report channel and the harness's
channel to the program are socket pairs, not pipes: a pipe can be opened anew
through /proc/<pid>/fd/<n> by anyone allowed to look there, a socket cannot.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time

if __package__:
    from .cleanup import kill_group, reap_leftovers, remove_tree, sweep
    from .harness import run_harness
    from .program import run_program
    from .protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, STATUSES, Limits, cpu_limit_s, wipe
else:  # a plain sibling module inside the zygote
    from cleanup import kill_group, reap_leftovers, remove_tree, sweep
    from harness import run_harness
    from program import run_program
    from protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, STATUSES, Limits, cpu_limit_s, wipe

_REPORT_MAX = 1 << 20
_PROGRAM_GRACE_S = 0.05  # after the harness is done, the program exits on its own (EOF) or is killed
_REPORT_KEYS = ("status", "failed_test", "exc_type", "message", "traceback", "bad_test", "entered")


def run_one(request: dict, program_text: bytearray, tests: bytearray, state: dict) -> dict:
    """One request in (its frame, and the program and the tests as buffers this wipes), one
    ``RunResult`` dict out; never leaves a process behind. ``restart`` is set when the run's
    directory could not be removed: the service then replaces this zygote (and its /tmp)."""
    limits = Limits(**request["limits"])
    workdir = _make_workdir(state)
    # RLIMIT_NPROC counts every task of the real uid: without our own uids, allow the service's on top.
    nproc = limits.max_processes + (_user_tasks(os.getuid()) if state["uid"] is None else 0)
    opened: list[int] = []
    pids: list[int] = []
    try:
        report_r, report_w = _channel(opened)
        os.set_blocking(report_r, False)  # drained, not polled: see _watch
        requests_t, requests_p = _channel(opened, program_end=socket.SHUT_WR)  # the program only reads
        replies_t, replies_p = _channel(opened, program_end=socket.SHUT_RD)  # and only writes here
        out_r, out_w = _pipe(opened)
        err_r, err_w = _pipe(opened)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(devnull)
        started = time.monotonic()
        try:
            harness = os.fork()
            if harness == 0:
                run_harness(request, tests, limits, state, workdir,
                            [devnull, out_w, err_w, report_w, requests_t, replies_t], nproc)
        finally:
            wipe(tests)  # the program process is forked from this memory next: no trace of the tests in it
        pids.append(harness)
        for fd in (report_w, requests_t, replies_t):  # the harness's ends: gone before the program is forked
            _close(fd, opened)
        try:
            program = os.fork()
            if program == 0:
                run_program(program_text, limits, state, workdir, [devnull, out_w, err_w, requests_p, replies_p], nproc)
        finally:
            wipe(program_text)  # nor of this program in the next run's
        pids.append(program)
        for fd in (requests_p, replies_p, out_w, err_w, devnull):
            _close(fd, opened)
        outcome = _watch(harness, program, {report_r: "report", out_r: "stdout", err_r: "stderr"},
                         limits, started, state)
    finally:
        for fd in opened:
            os.close(fd)
        reap_leftovers(tuple(pids), state)
        removed = remove_tree(workdir)
    result = _judge_outcome(outcome, limits) | {"duration_s": round(time.monotonic() - started, 6)}
    if removed:
        return result
    os.write(2, f"sandbox: could not remove {workdir}; this zygote is replaced\n".encode(errors="replace"))
    return result | {"restart": True}


def _channel(opened: list[int], program_end: int | None = None) -> tuple[int, int]:
    """A connected pair of Unix stream sockets as raw descriptors; ``program_end`` shuts one
    direction of the second (the one the program gets)."""
    first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if program_end is not None:
        second.shutdown(program_end)
    fds = first.detach(), second.detach()
    opened.extend(fds)
    return fds


def _pipe(opened: list[int]) -> tuple[int, int]:
    fds = os.pipe2(os.O_CLOEXEC)
    opened.extend(fds)
    return fds


def _close(fd: int, opened: list[int]) -> None:
    opened.remove(fd)
    os.close(fd)


def _make_workdir(state: dict) -> str:
    import tempfile

    # With a mount namespace /tmp is our private tmpfs (root-owned 0755): only this dir is writable.
    path = tempfile.mkdtemp(prefix="run-", dir="/tmp" if state["mountns"] else None)
    if state["uid"] is not None:
        os.chown(path, state["uid"], state["uid"])
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


# ============================================================== watching


def _watch(harness: int, program: int, fds: dict[int, str], limits: Limits, started: float, state: dict) -> dict:
    """Collect the outputs until both processes ended and their outputs closed, or a limit is hit.

    The report channel is not polled (a wake-up per stage marker costs more than a short test):
    it is drained whenever something else wakes us, at least every 50 ms (a harness with thousands
    of tests may wait that long for room in the socket), and at the end. A child's end wakes us
    through the zygote's SIGCHLD pipe. The program's process group dies with it; once both ended,
    descendants that left the group (setsid) and still hold an output pipe a moment later are swept.
    """
    report_fd = next(fd for fd, name in fds.items() if name == "report")
    report, tails = bytearray(), {"stdout": bytearray(), "stderr": bytearray()}
    total_output, reason = 0, None
    deadline = started + limits.timeout_s
    poller = select.poll()
    outputs = {fd: name for fd, name in fds.items() if fd != report_fd}
    for fd in outputs:
        poller.register(fd, select.POLLIN)
    wakeup = state.get("wakeup_fd")
    if wakeup is not None:
        poller.register(wakeup, select.POLLIN)
    statuses: dict[int, tuple] = {}
    open_fds, kill_program_at, sweep_at = set(outputs), None, None
    while True:
        _drain(report_fd, report)
        now = time.monotonic()
        for pid in (program, harness):  # the program first: its end explains the harness's report
            if pid not in statuses:
                waited, raw, rusage = os.wait4(pid, os.WNOHANG)
                if waited:
                    statuses[pid] = (raw, rusage.ru_utime + rusage.ru_stime)
                    kill_group(pid)
                    if pid == harness and program not in statuses:
                        kill_program_at = now + _PROGRAM_GRACE_S
                    sweep_at = sweep_at or now + 0.02
        if kill_program_at is not None and now >= kill_program_at and program not in statuses:
            kill_group(program)
            kill_program_at = None
        if sweep_at is not None and now >= sweep_at and open_fds:
            sweep(state, spare=None if harness in statuses else harness)
            sweep_at = None
        if len(statuses) == 2:
            if not open_fds:
                break
            deadline = min(deadline, now + 1.0)  # leftovers holding a pipe: swept, then given up on
        wait_s = deadline - now
        if wait_s <= 0:
            if len(statuses) < 2:
                reason = reason or "timeout"
            break
        # Without the SIGCHLD pipe, or with a kill or sweep due, wake up at least every 10 ms.
        due = wakeup is None or sweep_at is not None or kill_program_at is not None
        wait_s = min(wait_s, 0.01 if due else 0.05)
        for fd, _ in poller.poll(wait_s * 1000):
            if fd == wakeup:
                _drain(wakeup, bytearray())
                continue
            data = os.read(fd, 65536)
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            tail = tails[outputs[fd]]
            tail += data
            del tail[: max(0, len(tail) - limits.output_tail_bytes)]
            total_output += len(data)
            if total_output > limits.max_output_bytes and reason is None:
                reason = "output_limit"
                kill_group(program)
                kill_group(harness)
    for pid in (program, harness):
        if pid not in statuses:
            kill_group(pid)
            _, raw, rusage = os.wait4(pid, 0)
            statuses[pid] = (raw, rusage.ru_utime + rusage.ru_stime)
    _drain(report_fd, report)
    return {"reason": reason, "program": statuses[program], "harness": statuses[harness], "report": bytes(report),
            "stdout": _text(tails["stdout"]), "stderr": _text(tails["stderr"])}


def _drain(fd: int, into: bytearray) -> None:
    """Read what is in a non-blocking pipe or socket now (bounded by _REPORT_MAX)."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            return
        if len(into) < _REPORT_MAX:
            into += data


# ============================================================== judging


def _judge_outcome(outcome: dict, limits: Limits) -> dict:
    """Turn what the zygote saw into a RunResult dict: the harness's report, else how processes ended."""
    raw, _ = outcome["program"]
    exit_code = os.waitstatus_to_exitcode(raw)
    base = {"stdout": outcome["stdout"], "stderr": outcome["stderr"], "duration_s": 0.0,
            "exit_code": exit_code if exit_code >= 0 else None,
            "signal": signal_name(-exit_code) if exit_code < 0 else None}
    report, stage = _read_report(outcome["report"])
    failed_test = stage - 1 if stage > 0 else None
    if outcome["reason"] in ("timeout", "output_limit"):
        what = f"wall clock limit of {limits.timeout_s:g} s" if outcome["reason"] == "timeout" \
            else f"more than {limits.max_output_bytes} bytes of output"
        return base | {"status": outcome["reason"], "failed_test": failed_test, "message": f"killed: {what}"}
    if report is None:  # the harness ended without a verdict: its own limits, or it was killed
        return base | _ended("the test harness", outcome["harness"], outcome["stderr"], limits) \
            | {"failed_test": failed_test}
    entered = report.pop("entered", True)
    if report["status"] == "program_died":
        ended = _ended("the program", outcome["program"], outcome["stderr"], limits, entered=entered)
        return base | report | {"exc_type": None} | ended
    if report["status"] not in STATUSES:
        return base | {"status": "error", "message": f"the harness reported {report['status']!r}"}
    return base | report


def _read_report(data: bytes) -> tuple[dict | None, int]:
    """(the harness's final report, the last stage it started)."""
    report, stage = None, 0
    for line in data.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if "status" in message:
            report = {key: message[key] for key in _REPORT_KEYS if key in message}
        elif type(message.get("stage")) is int:
            stage = message["stage"]
    return report, stage


def _ended(who: str, status: tuple, stderr: str, limits: Limits, entered: bool = False) -> dict:
    """Status and message for a process that ended before the tests finished. Exit codes 71/72
    mean setup failure / out of memory only before the process ``entered`` the sandbox: after
    that the program could pick them (71 would turn its failure into a sandbox error)."""
    raw, cpu_s = status
    exit_code = os.waitstatus_to_exitcode(raw)
    sig = signal_name(-exit_code) if exit_code < 0 else None
    cpu_limit = cpu_limit_s(limits)
    # SIGXCPU comes at the soft limit; SIGKILL at the hard one if the process ignored it.
    if sig == "SIGXCPU" or (sig == "SIGKILL" and cpu_s >= cpu_limit):
        return {"status": "cpu", "message": f"killed: CPU limit of {cpu_limit} s"}
    if exit_code == EXIT_OUT_OF_MEMORY:
        return {"status": "memory", "message": "out of memory"}
    if exit_code == EXIT_SETUP_FAILED and not entered:
        return {"status": "error", "message": f"{who} could not enter the sandbox: " + stderr[-500:]}
    if sig is not None:
        return {"status": "crashed", "message": f"{who} was killed by {sig}"}
    return {"status": "exited", "message": f"{who} exited with code {exit_code} before the tests finished"}


# ============================================================== cleaning up


def signal_name(number: int) -> str:
    """``SIGKILL``, ``SIGRTMIN+6``, or ``SIG99``: any number a process can die of, never an exception."""
    try:
        return signal.Signals(number).name
    except ValueError:
        pass
    low, high = getattr(signal, "SIGRTMIN", None), getattr(signal, "SIGRTMAX", None)
    if low is not None and high is not None and low <= number <= high:
        return f"SIGRTMIN+{number - low}" if number - low <= high - number else f"SIGRTMAX-{high - number}"
    return f"SIG{number}"


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
