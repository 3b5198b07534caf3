"""The sandbox contains hostile programs, in every isolation mode this machine allows.

Three sandboxes: ``full`` (all layers), ``kernel`` (audit hook off: only what the
kernel enforces — needs root and namespaces) and ``hook`` (no namespaces, no uid
drop: what a non-root deployment relies on). Limits are small to keep this fast.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid

import pytest

import cgpo.services.judges.sandbox as sandbox_module
from cgpo.services.judges.sandbox import Isolation, Job, Limits, Sandbox, SandboxPool, SandboxUnavailable

LIMITS = Limits(timeout_s=1.0, memory_mb=256, max_processes=8, max_file_bytes=64 << 10,
                max_output_bytes=64 << 10, output_tail_bytes=1024)
SECRET = "cgpo-secret-" + uuid.uuid4().hex
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module", autouse=True)
def secret_in_service_env():
    """A secret in the service's environment before any zygote starts."""
    os.environ["CGPO_API_KEYS"] = SECRET
    yield
    os.environ.pop("CGPO_API_KEYS", None)


def _start(isolation: Isolation) -> Sandbox:
    sandbox = Sandbox(LIMITS, isolation)
    sandbox.start()
    return sandbox


@pytest.fixture(scope="module")
def full(secret_in_service_env):
    with _start(Isolation()) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def kernel(secret_in_service_env):
    sandbox = _start(Isolation(audit_hook=False))
    if not (sandbox.isolation["uid"] is not None and sandbox.isolation["netns"] and sandbox.isolation["mountns"]):
        sandbox.close()
        pytest.skip("kernel-only containment needs root and namespaces")
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def hook(secret_in_service_env):
    with _start(Isolation(namespaces=False, drop_privileges=False)) as sandbox:
        yield sandbox


@pytest.fixture(params=["full", "kernel", "hook"])
def any_sandbox(request) -> Sandbox:
    return request.getfixturevalue(request.param)


def _assert_still_works(sandbox: Sandbox) -> None:
    result = sandbox.run("def f(x):\n    return x * 2", ["assert f(2) == 4"])
    assert result.status == "ok", result


def _zygote_pid(sandbox: Sandbox) -> int:
    """The serving zygote: the process Sandbox started, or (with a PID namespace) its one child."""
    pid = sandbox._proc.pid
    if not sandbox.isolation["pidns"]:
        return pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        (child,) = f.read().split()
    return int(child)


def _processes_in_namespace_of(pid: int) -> set[int]:
    """Host pids of every process in the PID namespace ``pid`` is in."""
    namespace = os.readlink(f"/proc/{pid}/ns/pid")
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                found.add(int(entry))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------- normal runs


def test_tests_see_the_program_names_and_share_one_namespace(full):
    result = full.run("def add(a, b):\n    return a + b\nprint('hello')", ["assert add(1, 2) == 3", "x = add(2, 2)",
                                                                             "assert x == 4"])
    assert result.status == "ok" and result.stdout == "hello\n" and result.failed_test is None


def test_the_tests_run_in_another_process(full):
    """The harness is a separate process: the program's module state is not the tests' module state."""
    result = full.run("import os\nPID = os.getpid()\ndef pid():\n    return os.getpid()",
                      ["import os\nassert PID == pid() != os.getpid()", "assert __name__ == '__main__'"])
    assert result.status == "ok", result


def test_failing_test_names_index_line_and_exception(full):
    result = full.run("def add(a, b):\n    return a - b", ["assert add(0, 0) == 0", "assert add(1, 2) == 3"])
    assert (result.status, result.failed_test, result.exc_type) == ("exception", 1, "AssertionError")
    assert result.traceback[-1] == ("<test 1>", 1, "assert add(1, 2) == 3")
    assert "AssertionError" in result.stderr and "<test 1>" in result.stderr


def test_exception_in_program_is_not_blamed_on_a_test(full):
    result = full.run("x = 1 / 0", ["assert True"])
    assert (result.status, result.failed_test, result.exc_type) == ("exception", None, "ZeroDivisionError")


def test_stdin_is_empty_and_main_guard_runs(full):
    result = full.run("if __name__ == '__main__':\n    print('main')\ninput()")
    assert result.stdout == "main\n" and result.exc_type == "EOFError"


def test_own_session_and_process_group(full):
    result = full.run("import os\nprint(os.getpid(), os.getsid(0), os.getpgrp(), os.getppid())")
    pid, sid, pgrp, ppid = map(int, result.stdout.split())
    assert pid == sid == pgrp
    assert sid != os.getsid(0) and ppid != os.getpid()  # the zygote is the parent, not the service


def test_rlimits_are_applied(full):
    result = full.run(
        "import resource as r\n"
        "print(*(r.getrlimit(k)[0] for k in (r.RLIMIT_CPU, r.RLIMIT_AS, r.RLIMIT_FSIZE, r.RLIMIT_CORE)))"
    )
    cpu, address_space, file_size, core = map(int, result.stdout.split())
    assert (cpu, address_space, file_size, core) == (1, 256 << 20, 64 << 10, 0)


@pytest.mark.skipif(not IS_ROOT, reason="privileges are dropped only when running as root")
def test_drops_root_to_the_claimed_uid_with_nproc_limit(full):
    result = full.run("import os, resource\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), "
                      "resource.getrlimit(resource.RLIMIT_NPROC)[0])")
    uid = full.isolation["uid"]
    assert result.stdout.split() == [str(uid), str(uid), str(uid), "[]", "8"]


def test_environment_is_scrubbed_everywhere_the_program_can_look(full):
    program = f"""
import os
seen = [repr(dict(os.environ))]
for pid in ("self", os.getppid(), {os.getpid()}):
    try:
        seen.append(open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace"))
    except OSError as exc:
        seen.append(type(exc).__name__)
print(seen)
"""
    result = full.run(program)
    assert result.status == "ok", result
    assert SECRET not in result.stdout and "CGPO_API_KEYS" not in result.stdout
    assert "PermissionError" in result.stdout  # the service's own environ is out of reach


def test_zygote_itself_starts_with_a_scrubbed_environment(full):
    with open(f"/proc/{full._proc.pid}/environ", "rb") as f:
        assert SECRET.encode() not in f.read()


def test_working_directory_is_fresh_and_removed(full):
    first = full.run("import os\nopen('mine.txt', 'w').write('x')\nprint(os.getcwd())")
    second = full.run("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert first.status == second.status == "ok"
    assert first.stdout.split()[0] != second.stdout.split()[0] and "[]" in second.stdout
    assert not os.path.exists(first.stdout.strip())


# ---------------------------------------------------------------- limits


def test_infinite_loop_is_killed_at_the_wall_clock(any_sandbox):
    started = time.monotonic()
    result = any_sandbox.run("while True:\n    pass", ["assert True"])
    assert result.status in ("timeout", "cpu") and time.monotonic() - started < LIMITS.timeout_s + 1.5
    _assert_still_works(any_sandbox)


def test_sleeping_program_times_out_with_its_test_named(full):
    result = full.run("import time", ["assert True", "time.sleep(60)"])
    assert (result.status, result.failed_test) == ("timeout", 1)


def test_cpu_limit(full):
    result = full.run("while True:\n    pass", limits=Limits(timeout_s=4, cpu_s=1))
    assert result.status == "cpu" and result.duration_s < 3


def test_memory_bomb_fails_fast(any_sandbox):
    for bomb in ("x = ' ' * (4 << 30)", "x = []\nwhile True:\n    x.append(' ' * 100_000)"):
        result = any_sandbox.run(bomb)
        assert result.status == "memory" and result.duration_s < 2, result
    _assert_still_works(any_sandbox)


def test_file_size_limit(full):
    result = full.run("open('big', 'wb').write(b'x' * (1 << 20))")
    assert result.status == "file_size"


def test_output_is_bounded(full):
    result = full.run("while True:\n    print('x' * 1000)")
    assert result.status == "output_limit" and len(result.stdout) <= LIMITS.output_tail_bytes


def test_fork_bomb_is_contained(any_sandbox):
    started = time.monotonic()
    result = any_sandbox.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert result.status != "ok" and time.monotonic() - started < LIMITS.timeout_s + 2
    _assert_still_works(any_sandbox)


def test_processes_left_behind_are_killed(any_sandbox):
    """A grandchild that left the group (setsid) and a plain child both die with the run."""
    program = """
import os, sys, time
try:
    child = os.fork()
except PermissionError:  # the hook-only sandbox refuses fork as root
    print("no fork"); sys.exit()
if child == 0:
    os.setsid()
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(60)
    print(os.getpid(), grandchild, flush=True)
    time.sleep(60)
time.sleep(0.3)
"""
    result = any_sandbox.run(program)
    if result.stdout == "no fork\n":
        return
    assert result.status == "ok", result
    if any_sandbox.isolation["pidns"]:  # the printed pids are the namespace's: look at all of it
        zygote = _zygote_pid(any_sandbox)
        assert _processes_in_namespace_of(zygote) == {zygote}
        return
    for pid in map(int, result.stdout.split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---------------------------------------------------------------- hostile programs


def test_network_connection_is_impossible(any_sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        result = any_sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert result.status == "exception", result
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@pytest.mark.parametrize("target", ["/tmp", "repo"])
def test_writing_outside_the_working_directory_fails(any_sandbox, target):
    directory = os.path.dirname(os.path.abspath(__file__)) if target == "repo" else "/tmp"
    path = os.path.join(directory, f"sandbox-escape-{uuid.uuid4().hex}")
    # Refused by the hook; in the minimal root (kernel only) the checkout's tests are not even there.
    refusals = ("PermissionError", "OSError") + ("FileNotFoundError",) * any_sandbox.isolation["minimal_root"]
    try:
        result = any_sandbox.run(f"open({path!r}, 'w').write('owned')")
        assert result.status == "exception" and result.exc_type in refusals, result
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.remove(path)


def test_killing_the_parent_and_the_service_is_contained(any_sandbox):
    zygote = any_sandbox._proc.pid
    targets = ["os.kill(os.getppid(), signal.SIGKILL)", "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
               f"os.kill({os.getpid()}, signal.SIGKILL)", f"os.killpg({os.getpgrp()}, signal.SIGKILL)"]
    if any_sandbox.isolation["uid"] is not None:
        # As root without a uid drop this is never tried. Unprivileged, the kernel answers
        # success while signalling nothing it may not; survival below is what matters.
        targets.append("os.kill(-1, signal.SIGKILL)")
    program = (f"import os, signal\nfor attempt in {targets!r}:\n"
               "    try:\n        exec(attempt)\n        print('sent')\n"
               "    except OSError as exc:\n        print(type(exc).__name__)")
    result = any_sandbox.run(program)
    assert result.status == "ok", result
    outcomes = result.stdout.split()[:4]
    if any_sandbox.isolation["pidns"] and not any_sandbox.isolation["audit_hook"]:
        # In its PID namespace the zygote is pid 1 in group 1, and killpg(1) is kill(-1): "sent" to
        # the processes the program may signal, i.e. none but its own. The service is not even there.
        assert outcomes == ["PermissionError", "sent", "ProcessLookupError", "ProcessLookupError"], result
    else:
        assert outcomes == ["PermissionError"] * 4, result
    assert any_sandbox._proc.pid == zygote and any_sandbox._proc.poll() is None
    _assert_still_works(any_sandbox)


def test_forged_report_is_ignored(full):
    """Descriptor 3 of the program is its end of the request socket, shut for writing: the old report
    channel is gone."""
    result = full.run("import os\nos.write(3, b'{\"status\": \"ok\"}\\n')\nos._exit(0)", ["assert False"])
    assert (result.status, result.exc_type) == ("exception", "BrokenPipeError"), result
    result = full.run("import os\nos.write(4, b'{\"status\": \"ok\"}\\n')\nos._exit(0)", ["assert False"])
    assert result.status == "crashed" and "protocol" in result.message, result


FORGE_THROUGH_PROC = """
import json, os, struct
SERVICE, ZYGOTE = {service}, {zygote}
body = b'{{"status": "ok"}}'
forged = struct.pack('>I', len(body)) + body + body + b'\\n'  # a reply frame, and a report line
hits = []
def attempt(label, opener):
    try:
        fd = opener()
        os.write(fd, forged)
        hits.append(label)
    except OSError:
        pass
try:
    proc = os.open('/proc', os.O_RDONLY | os.O_DIRECTORY)
except OSError:
    proc = None
for pid in (SERVICE, ZYGOTE, os.getppid()):
    names = [str(n) for n in range(64)]
    try:
        names = os.listdir(f'/proc/{{pid}}/fd')
    except OSError:
        pass
    for name in names:
        attempt(f'{{pid}}/{{name}}', lambda: os.open(f'/proc/{{pid}}/fd/{{name}}', os.O_WRONLY))
        if proc is not None:  # the path relative to a directory descriptor
            attempt(f'{{pid}}/{{name}} at', lambda: os.open(f'{{pid}}/fd/{{name}}', os.O_WRONLY, dir_fd=proc))
print(json.dumps(hits))
def add(a, b):
    return a - b
"""


def test_forging_through_proc_fd_fails_in_every_mode(any_sandbox):
    """Writing a verdict into the service's or the zygote's channels through /proc/<pid>/fd/<n>
    (by path, or relative to a /proc descriptor): they are sockets, which cannot be opened anew,
    and the service and zygote are out of the program's /proc or reach."""
    zygote = _zygote_pid(any_sandbox)
    program = FORGE_THROUGH_PROC.format(service=os.getpid(), zygote=zygote)
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
    forger = any_sandbox.run(program, tests)
    assert forger.status == "exception" and forger.exc_type == "AssertionError", forger
    assert json.loads(forger.stdout) == [], forger.stdout
    following = [any_sandbox.run("def add(a, b):\n    return 0", tests) for _ in range(3)]
    assert [r.status for r in following] == ["exception"] * 3, following
    _assert_still_works(any_sandbox)


def test_exit_before_the_tests_is_not_a_pass(full):
    assert full.run("import os\nos._exit(0)", ["assert False"]).status == "exited"
    result = full.run("import sys\nsys.exit(0)", ["assert False"])
    assert (result.status, result.exc_type, result.failed_test) == ("exited", "SystemExit", None)


@pytest.mark.parametrize("name", ["full", "hook"])
def test_ctypes_is_refused(request, name):
    result = request.getfixturevalue(name).run("import ctypes\nctypes.CDLL(None).getpid()")
    assert result.exc_type == "PermissionError"


# ---------------------------------------------------------------- robustness


def test_dead_zygote_is_restarted():
    with _start(Isolation()) as sandbox:
        os.killpg(sandbox._proc.pid, signal.SIGKILL)
        sandbox._proc.wait()
        _assert_still_works(sandbox)


def test_a_zygote_lost_mid_run_is_replaced_and_the_run_repeated():
    with _start(Isolation()) as sandbox:
        pid = sandbox._proc.pid
        threading.Timer(0.3, os.killpg, (pid, signal.SIGKILL)).start()
        result = sandbox.run("import time\ntime.sleep(0.6)\nprint('done')")
        assert (result.status, result.stdout) == ("ok", "done\n"), result
        assert sandbox._proc.pid != pid
        _assert_still_works(sandbox)


def _kill_every_new_zygote(sandbox: Sandbox, stop: threading.Event, after_s: float) -> None:
    """Each zygote this sandbox starts is killed ``after_s`` after it appears (a run that takes down
    whatever zygote it runs on)."""
    killed = set()
    while not stop.is_set():
        proc = sandbox._proc
        if proc is not None and proc.pid not in killed:
            time.sleep(after_s)
            killed.add(proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


def test_a_run_that_takes_down_two_zygotes_fails_and_is_not_an_error():
    """Run again once on a fresh zygote; lost again: the program's doing (``crashed_sandbox``)."""
    with _start(Isolation()) as sandbox:
        stop = threading.Event()
        killer = threading.Thread(target=_kill_every_new_zygote, args=(sandbox, stop, 0.3))
        killer.start()
        try:
            result = sandbox.run("import time\ntime.sleep(0.6)")
        finally:
            stop.set()
            killer.join()
        assert result.status == "crashed_sandbox" and "twice" in result.message, result
        _assert_still_works(sandbox)


def test_a_zygote_that_cannot_start_is_an_error(monkeypatch):
    """``error`` stays for the sandbox failing by itself: nothing a program did."""
    monkeypatch.setattr(sandbox_module, "_ZYGOTE", "/nonexistent/zygote.py")
    result = Sandbox(LIMITS).run("print(1)")
    assert result.status == "error" and "did not start" in result.message, result


def test_a_strict_zygote_whose_setup_is_refused_makes_the_sandbox_unavailable(monkeypatch, tmp_path):
    """A setup the machine refuses (here: a zygote reporting a refused mount) is no sandbox at all
    in strict mode; weak mode reports it as the error it is."""
    zygote = tmp_path / "zygote.py"
    zygote.write_text("import json, os, struct\n"
                      "body = json.dumps({'error': 'Traceback ...\\nSandboxError: mount on /tmp refused'}).encode()\n"
                      "os.write(1, struct.pack('>I', len(body)) + body)\n")
    monkeypatch.setattr(sandbox_module, "_ZYGOTE", str(zygote))
    strict = Sandbox(LIMITS, Isolation(strict=True)).run("print(1)")
    assert strict.status == "unavailable" and strict.message.endswith("SandboxError: mount on /tmp refused"), strict
    weak = Sandbox(LIMITS).run("print(1)")
    assert weak.status == "error" and "mount on /tmp refused" in weak.message, weak


# Named as the zygote reports them; only SIGRTMIN and SIGRTMAX are members of signal.Signals.
# 32 and 33 are glibc's own (thread cancellation, setxid): whether a process has a handler for them is
# glibc's business (it installs one on first use), so a program may or may not be killed by them.
REALTIME_SIGNALS = {34: "SIGRTMIN", 40: "SIGRTMIN+6", 60: "SIGRTMAX-4", 64: "SIGRTMAX"}
SELF_SIGNAL = {
    "program": "import os\nos.kill(os.getpid(), {n})",
    "call": "import os\ndef f(x):\n    os.kill(os.getpid(), {n})",
    "after_the_tests": "import os, threading\ndef f(x):\n    threading.Timer(0, os.kill, (os.getpid(), {n})).start()\n"
                       "    return 0",
}


@pytest.mark.skipif(signal.SIGRTMIN != 34 or signal.SIGRTMAX != 64, reason="glibc's real-time signal range")
@pytest.mark.parametrize("number", list(REALTIME_SIGNALS))
@pytest.mark.parametrize("stage", list(SELF_SIGNAL))
def test_a_program_killed_by_any_signal_is_judged_by_the_same_zygote(full, number, stage):
    """Most real-time signals have no ``signal.Signals`` member: naming one must not end the zygote."""
    zygote = full._proc.pid
    result = full.run(SELF_SIGNAL[stage].format(n=number), ["assert f(1) == 2"])
    # After the tests, the harness may have seen the wrong answer before the signal: a failure either way.
    assert result.status in ("crashed", "exception") and result.signal == REALTIME_SIGNALS[number], result
    assert full._proc.pid == zygote
    _assert_still_works(full)


@pytest.mark.skipif(signal.SIGRTMIN != 34 or signal.SIGRTMAX != 64, reason="glibc's real-time signal range")
def test_signals_the_service_blocks_or_ignores_still_end_a_program(secret_in_service_env):
    """A blocked mask and ignored signals pass through fork and exec: a zygote started from a service
    thread that blocks signals (an event loop's, a thread pool's) must not hand them to programs, or a
    program that kills itself would run on and be judged on something else."""
    started: dict[str, Sandbox] = {}

    def start_from_a_thread_that_blocks_everything() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        started["sandbox"] = _start(Isolation())

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        thread = threading.Thread(target=start_from_a_thread_that_blocks_everything)
        thread.start()
        thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    sandbox = started["sandbox"]
    try:
        for number, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGUSR1, "SIGUSR1"),
                             (signal.SIGRTMIN + 6, "SIGRTMIN+6")):
            result = sandbox.run(f"import os\nos.kill(os.getpid(), {int(number)})", ["assert f(1) == 2"])
            assert result.status == "crashed" and result.signal == name, result
    finally:
        sandbox.close()


DEEP_TREES = {
    # 'x/' * DEPTH: deeper than the recursion limit (and, on a tmpfs, a path longer than PATH_MAX);
    # built from short paths (each step moves the chain one level down), so the hook's checks stay cheap.
    "deeper_than_recursion_and_path_max": """
import os
os.mkdir('x')
for _ in range(DEPTH):
    os.mkdir('y')
    os.rename('x', 'y/x')
    os.rename('y', 'x')
""",
    "unreadable_directories_links_and_many_files": """
import os
os.makedirs('a/b/c')
for i in range(1000):
    open(f'a/f{i}', 'w').close()
os.symlink('/', 'a/b/root')
os.symlink('../../..', 'a/b/c/up')
os.makedirs('.cgpo-rm-1/x')
open('.cgpo-rm-2', 'w').close()
for path in ('a/b/c', 'a/b', 'a', '.'):
    os.chmod(path, 0)
""",
}


@pytest.mark.parametrize("name", list(DEEP_TREES))
def test_whatever_a_program_leaves_in_its_directory_is_removed(any_sandbox, name):
    zygote = any_sandbox._proc.pid
    depth = 2500 if any_sandbox.isolation["mountns"] else 1200  # its /tmp is a tmpfs, or the host's disk
    tree = DEEP_TREES[name].replace("DEPTH", str(depth))
    program = "import os\nWORKDIR = os.getcwd()\nprint(WORKDIR, flush=True)\n" + tree
    result = any_sandbox.run(program + "def f(x):\n    return 0\n", ["assert f(1) == 2"],
                             limits=Limits(timeout_s=10, memory_mb=256))
    assert (result.status, result.exc_type) == ("exception", "AssertionError"), result
    assert any_sandbox._proc.pid == zygote
    workdir = result.stdout.split()[0]
    if any_sandbox.isolation["mountns"]:  # the zygote's own /tmp: look from inside
        after = any_sandbox.run(f"import os\nprint(os.path.exists({workdir!r}), os.listdir('/tmp'))")
        assert after.stdout.startswith("False") and workdir.rsplit("/", 1)[1] not in after.stdout, after
    else:
        assert not os.path.exists(workdir)
    assert os.path.exists("/etc/passwd")  # no link was followed out of it
    _assert_still_works(any_sandbox)


def test_strict_sandbox_runs_here_and_reports_nothing_missing():
    with _start(Isolation(strict=True)) as sandbox:
        assert sandbox.missing_layers == [], sandbox.isolation
        _assert_still_works(sandbox)


@pytest.mark.parametrize("degraded", [Isolation(strict=True, namespaces=False),
                                      Isolation(strict=True, seccomp=False),
                                      Isolation(strict=True, drop_privileges=False)])
def test_a_strict_sandbox_this_machine_cannot_build_runs_nothing(degraded, tmp_path):
    marker = tmp_path / "ran"
    sandbox = Sandbox(LIMITS, degraded)
    with pytest.raises(SandboxUnavailable) as raised:
        sandbox.start()
    assert "strict sandbox needs" in str(raised.value)
    result = sandbox.run(f"open({str(marker)!r}, 'w').close()")
    assert result.status == "unavailable" and result.message == str(raised.value), result
    assert sandbox._proc is None and not marker.exists()
    pool = SandboxPool(1, LIMITS, degraded)
    try:
        pool.start()
        assert isinstance(pool.unavailable, SandboxUnavailable)
    finally:
        pool.close()


def test_pool_runs_jobs_in_parallel_and_in_order():
    pool = SandboxPool(2, LIMITS)
    try:
        pool.start()
        jobs = [Job(f"import time\ntime.sleep(0.4)\nprint({i})") for i in range(4)]
        started = time.monotonic()
        results = pool.run_many(jobs)
        assert time.monotonic() - started < 1.4  # 4 x 0.4 s on 2 zygotes, not 1.6 s serially
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    finally:
        pool.close()


def test_limits_are_validated():
    with pytest.raises(ValueError):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(memory_mb=0)
