"""The sandbox contains hostile programs, in every isolation mode this machine allows.

Three sandboxes: ``full`` (all layers), ``kernel`` (audit hook off: only what the
kernel enforces — needs root and namespaces) and ``hook`` (no namespaces, no uid
drop: what a non-root deployment relies on). Limits are small to keep this fast.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid

import pytest

from services.judges.sandbox import Isolation, Job, Limits, Sandbox, SandboxPool

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


# ---------------------------------------------------------------- normal runs


def test_program_and_tests_share_one_module(full):
    result = full.run("def add(a, b):\n    return a + b\nprint('hello')", ["assert add(1, 2) == 3", "x = add(2, 2)",
                                                                             "assert x == 4"])
    assert result.status == "ok" and result.stdout == "hello\n" and result.failed_test is None


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
    try:
        result = any_sandbox.run(f"open({path!r}, 'w').write('owned')")
        assert result.status == "exception" and result.exc_type in ("PermissionError", "OSError"), result
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
    program = "import os, signal\nfor attempt in %r:\n    try:\n        exec(attempt)\n        print('sent')\n" \
              "    except OSError as exc:\n        print(type(exc).__name__)" % targets
    result = any_sandbox.run(program)
    assert result.status == "ok", result
    assert result.stdout.split()[:4] == ["PermissionError"] * 4, result
    assert any_sandbox._proc.pid == zygote and any_sandbox._proc.poll() is None
    _assert_still_works(any_sandbox)


def test_forged_report_is_ignored(full):
    result = full.run("import os\nos.write(3, b'{\"status\": \"ok\"}\\n')\nos._exit(0)", ["assert False"])
    assert result.status == "exited"


def test_exit_before_the_tests_is_not_a_pass(full):
    assert full.run("import os\nos._exit(0)", ["assert False"]).status == "exited"
    result = full.run("import sys\nsys.exit(0)", ["assert False"])
    assert (result.status, result.exc_type) == ("exception", "SystemExit")


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


def test_zygote_dying_mid_run_is_an_error_then_recovers():
    with _start(Isolation()) as sandbox:
        pid = sandbox._proc.pid
        threading.Timer(0.3, os.killpg, (pid, signal.SIGKILL)).start()
        result = sandbox.run("import time\ntime.sleep(1)")
        assert result.status == "error" and "sandbox failure" in result.message
        _assert_still_works(sandbox)


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
