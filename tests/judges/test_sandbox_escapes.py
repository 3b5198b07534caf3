"""Escapes an outside probe found, as tests: each must fail at the kernel, not only at the audit hook.

The probe exec'd a fresh ``python3`` (no audit hook there), reached host Unix
sockets (PostgreSQL under /var/run, redis on 127.0.0.1), created user
namespaces with full capabilities inside, and listed every host process. Here
each attempt runs twice: from a fresh ``python3`` exec'd by the program in the
full sandbox, and from the program itself in the ``kernel`` sandbox (audit hook
off, ctypes allowed). A ``control`` sandbox without the seccomp filter shows
that the checks would notice its absence. Then: the minimal root (no host file
but system directories is there: not the checkout's test data, not /work, /root,
/srv, /opt), and the non-root mode emulated (uid 65534, as in the Docker image's
user): forging a verdict, reading the service's secrets, planting a .pth file,
limiting or stopping the service or the zygote. Needs root and namespaces
(skipped otherwise); the other degraded modes are covered in ``test_sandbox.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

import cgpo.services.judges.sandbox as sandbox_module
from cgpo.services.judges.base import Sample
from cgpo.services.judges.code import CodeJudge
from cgpo.services.judges.sandbox import Isolation, Limits, Sandbox
from tests.judges.test_sandbox import FORGE_THROUGH_PROC

LIMITS = Limits(timeout_s=5.0, memory_mb=256, max_processes=8)
PYTHON3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
SOCKET_PARENTS = ("/var/lib", "/srv", "/mnt", "/opt")  # not hidden by the sandbox, unlike /run or /tmp
HOST_SOCKETS = ("/var/run/postgresql/.s.PGSQL.5432", "/run/mysqld/mysqld.sock")
EPERM, ENOENT, EAFNOSUPPORT = 1, 2, 97
# Syscall numbers the probe calls through libc.syscall, per architecture.
SYSCALLS = {"x86_64": {"clone": 56, "keyctl": 250, "process_vm_readv": 310, "bpf": 321, "io_uring_setup": 425,
                       "prlimit64": 302, "pidfd_send_signal": 424, "pidfd_open": 434},
            "aarch64": {"clone": 220, "keyctl": 219, "process_vm_readv": 270, "bpf": 280, "io_uring_setup": 425,
                        "prlimit64": 261, "pidfd_send_signal": 424, "pidfd_open": 434}}
if os.uname().machine not in SYSCALLS:
    pytest.skip("syscall numbers for this architecture are not in the table", allow_module_level=True)

# Run inside the sandbox (directly, or by a fresh python3); prints {check: errno, 0 if it worked}.
PROBE = r'''
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def errno_of(result):
    return 0 if result >= 0 else ctypes.get_errno()

def connect(family, address):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(address)
        return 0
    except OSError as exc:
        return exc.errno or -1

targets, nr = json.loads(sys.argv[1]), json.loads(sys.argv[2])
me = os.getpid()
out = {
    "unshare_user": errno_of(libc.unshare(0x10000000)),
    "unshare_user_ns_net": errno_of(libc.unshare(0x10000000 | 0x00020000 | 0x40000000)),
    "clone_newuser": errno_of(libc.syscall(nr["clone"], 0x10000000 | 17, 0, 0, 0, 0)),
    "ptrace_traceme": errno_of(libc.ptrace(0, 0, 0, 0)),
    "io_uring_setup": errno_of(libc.syscall(nr["io_uring_setup"], 1, ctypes.create_string_buffer(120))),
    "bpf": errno_of(libc.syscall(nr["bpf"], 0, 0, 0)),
    "keyctl": errno_of(libc.syscall(nr["keyctl"], 0, 0, 0, 0, 0)),
}
if os.getpid() != me:
    os._exit(0)  # without the filter, clone made a child: it must not report too

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
out["process_vm_readv_self"] = errno_of(libc.syscall(nr["process_vm_readv"], os.getpid(),
                                                     ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0))
limits = ctypes.create_string_buffer(16)
out["prlimit64_by_pid"] = errno_of(libc.syscall(nr["prlimit64"], os.getpid(), 0, None, limits))  # on itself, by pid
out["prlimit64_self"] = errno_of(libc.syscall(nr["prlimit64"], 0, 0, None, limits))  # what setrlimit() does
out["pidfd_open"] = errno_of(libc.syscall(nr["pidfd_open"], os.getpid(), 0))
own = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)  # a /proc/<pid> directory works as a pidfd
out["pidfd_send_signal"] = errno_of(libc.syscall(nr["pidfd_send_signal"], own, 0, None, 0))
for name, path in targets["unix"].items():
    out[name] = connect(socket.AF_UNIX, path)
for name, port in targets["tcp"].items():
    out[name] = connect(socket.AF_INET, ("127.0.0.1", port))
out["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["pid"] = os.getpid()
out["hidden_dirs"] = {d: sorted(os.listdir(d)) for d in ("/run", "/dev/shm", "/var/tmp") if os.path.isdir(d)}
print(json.dumps(out))
'''


def _start(isolation: Isolation) -> Sandbox:
    sandbox = Sandbox(LIMITS, isolation)
    sandbox.start()
    iso = sandbox.isolation
    if not (iso["uid"] is not None and iso["netns"] and iso["mountns"] and iso["pidns"]):
        sandbox.close()
        pytest.skip("kernel containment needs root and namespaces")
    return sandbox


class Listeners:
    """Unix sockets in a directory the sandbox does not hide (one bound before the zygotes start,
    one after) and a TCP port on 127.0.0.1 — none may ever see a connection."""

    def __init__(self) -> None:
        parent = next((p for p in SOCKET_PARENTS if os.path.isdir(p) and os.access(p, os.W_OK)), None)
        if parent is None:
            pytest.skip("no writable directory outside the hidden ones")
        self.directory = tempfile.mkdtemp(prefix="cgpo-escape-", dir=parent)
        os.chmod(self.directory, 0o755)
        self.servers: dict[str, socket.socket] = {}
        self.before = self._unix("before")
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.tcp.setblocking(False)

    def _unix(self, name: str) -> str:
        path = os.path.join(self.directory, f"{name}.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen()
        server.setblocking(False)
        self.servers[name] = server
        return path

    def targets(self) -> dict:
        if "after" not in self.servers:
            self.after = self._unix("after")
        unix = {"unix_bound_before_start": self.before, "unix_bound_after_start": self.after}
        unix |= {f"host_{os.path.basename(p)}": p for p in HOST_SOCKETS if os.path.exists(p)}
        tcp = {"tcp_own_listener": self.tcp.getsockname()[1]}
        if _listening(6379):
            tcp["tcp_redis_6379"] = 6379
        return {"unix": unix, "tcp": tcp}

    def assert_untouched(self) -> None:
        for server in [*self.servers.values(), self.tcp]:
            with pytest.raises(BlockingIOError):
                server.accept()

    def close(self) -> None:
        for server in [*self.servers.values(), self.tcp]:
            server.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def listeners():
    listeners = Listeners()
    yield listeners
    listeners.close()


@pytest.fixture(scope="module")
def full(listeners):
    sandbox = _start(Isolation())
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def kernel(listeners):
    sandbox = _start(Isolation(audit_hook=False))
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def control(listeners):
    """No seccomp filter, no audit hook: what the namespaces alone allow."""
    sandbox = _start(Isolation(audit_hook=False, seccomp=False))
    yield sandbox
    sandbox.close()


def _probe(sandbox: Sandbox, targets: dict, fresh_python: bool) -> dict:
    args = [json.dumps(targets), json.dumps(SYSCALLS[os.uname().machine])]
    if fresh_python:
        if PYTHON3 is None:
            pytest.skip("no python3 on the sandbox's PATH")
        program = ("import subprocess, sys\n"
                   f"done = subprocess.run([{PYTHON3!r}, '-c', {PROBE!r}, *{args!r}], capture_output=True, text=True,\n"
                   "                      timeout=4)\n"
                   "print(done.stdout, end='')\nprint(done.stderr, file=sys.stderr)")
    else:
        program = f"import sys\nsys.argv = ['probe', *{args!r}]\nexec(compile({PROBE!r}, '<probe>', 'exec'))"
    result = sandbox.run(program)
    assert result.status == "ok", result
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["fresh_python3_in_full", "program_in_kernel"])
def probed(request, listeners) -> dict:
    sandbox = request.getfixturevalue("full" if request.param.startswith("fresh") else "kernel")
    return _probe(sandbox, listeners.targets(), fresh_python=request.param.startswith("fresh"))


# ---------------------------------------------------------------- the probe's escapes


def test_host_sockets_cannot_be_reached(probed, listeners):
    targets = listeners.targets()
    for name in [*targets["unix"], *targets["tcp"]]:
        assert probed[name] != 0, (name, probed)
    # Refused by the filter before any path or address is looked at.
    assert probed["unix_bound_before_start"] == probed["unix_bound_after_start"] == EPERM
    assert probed["tcp_own_listener"] == EAFNOSUPPORT
    listeners.assert_untouched()


def test_no_new_namespaces_no_tracing_no_kernel_attack_surface(probed):
    for check in ("unshare_user", "unshare_user_ns_net", "clone_newuser", "ptrace_traceme",
                  "process_vm_readv_self", "io_uring_setup", "bpf", "keyctl",
                  "prlimit64_by_pid", "pidfd_open", "pidfd_send_signal"):
        assert probed[check] == EPERM, (check, probed)
    assert probed["prlimit64_self"] == 0, probed  # setrlimit/getrlimit still work


def test_proc_lists_only_the_programs_own_processes(probed):
    assert probed["processes"] == [probed["pid"]], probed


def test_host_runtime_and_shared_memory_directories_are_empty(probed):
    assert probed["hidden_dirs"] == {d: [] for d in probed["hidden_dirs"]}, probed


def test_without_the_filter_the_same_probe_gets_through(control, listeners):
    """The control: the checks above are seccomp's doing (namespaces alone let these through)."""
    targets = listeners.targets()
    probed = _probe(control, targets, fresh_python=False)
    assert probed["unshare_user"] == 0 and probed["ptrace_traceme"] == 0, probed
    assert probed["pidfd_open"] == probed["pidfd_send_signal"] == probed["prlimit64_by_pid"] == 0, probed
    # Still unreachable without the filter: the minimal root has none of the host's directories.
    assert probed.get("host_.s.PGSQL.5432", ENOENT) == ENOENT
    assert probed["unix_bound_before_start"] == probed["unix_bound_after_start"] == ENOENT, probed
    listeners.assert_untouched()


# ---------------------------------------------------------------- the harness is out of reach


HOSTILE_BUT_CORRECT = """
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
me = os.getpid()
for pid in range(1, 512):
    if pid == me:
        continue
    libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    for what in ("mem", "fd/3", "fd/4", "fd/5"):
        try:
            with open(f"/proc/{pid}/{what}", "r+b", buffering=0) as f:
                f.write(b'{"status": "ok"}\\n')
        except OSError:
            pass
os.kill(-1, signal.SIGKILL)

def add(a, b):
    return a + b
"""


def test_a_correct_program_that_attacks_the_harness_still_gets_its_verdict(kernel):
    """Stopping, killing, tracing or writing into the harness fails: the tests run and the verdict
    is the real one, both ways."""
    good = kernel.run(HOSTILE_BUT_CORRECT, ["assert add(1, 2) == 3"])
    bad = kernel.run(HOSTILE_BUT_CORRECT, ["assert add(1, 2) == 4"])
    assert good.status == "ok", good
    assert (bad.status, bad.exc_type, bad.failed_test) == ("exception", "AssertionError", 0), bad


def test_isolation_reports_every_layer(full):
    iso = full.isolation
    assert iso["pidns"] and iso["proc_hidepid"] and iso["seccomp"] and iso["nondumpable"], iso
    assert iso["seccomp_error"] is None and iso["ro_root"] and iso["stdlib_readable"], iso
    assert None not in (iso["uid"], iso["harness_uid"]) and iso["uid"] != iso["harness_uid"], iso


# ---------------------------------------------------------------- degrading without seccomp


@pytest.mark.parametrize("missing", ["not_installed", "broken_module"])
def test_without_pyseccomp_the_sandbox_starts_and_says_so(monkeypatch, tmp_path, missing):
    broken = tmp_path / "pyseccomp.py"
    broken.write_text("raise RuntimeError('Unable to find libseccomp')\n")
    monkeypatch.setattr(sandbox_module, "seccomp_module_path",
                        lambda: None if missing == "not_installed" else str(broken))
    with Sandbox(LIMITS, Isolation()) as sandbox:
        assert sandbox.isolation["seccomp"] is False
        assert ("not installed" if missing == "not_installed" else "libseccomp") in sandbox.isolation["seccomp_error"]
        result = sandbox.run("def f():\n    return 1", ["assert f() == 1"])
        assert result.status == "ok", result


def test_seccomp_can_be_turned_off_explicitly():
    with Sandbox(LIMITS, Isolation(seccomp=False)) as sandbox:
        assert sandbox.isolation["seccomp"] is False and "disabled" in sandbox.isolation["seccomp_error"]


def test_bad_isolation_and_jobs_get_clear_errors():
    with pytest.raises(ValueError, match="uid"):
        Isolation(uid=0)
    with pytest.raises(TypeError, match="tests"):
        sandbox_module.Job("x = 1", "assert True")
    with pytest.raises(ValueError, match="entry_point"):
        sandbox_module.Job("x = 1", (), entry_point="not an identifier")
    with pytest.raises(TypeError, match="program"):
        Sandbox(LIMITS).run(b"x = 1")  # type: ignore[arg-type]



# ---------------------------------------------------------------- the tests never reach the program

MEMORY_SCAN = """
import ctypes
first, second = {first!r}.encode(), {second!r}.encode()  # never joined here: the needle is not in memory
found = 0
with open("/proc/self/maps") as maps:  # /proc/self/mem is the kernel's to refuse here (non-dumpable)
    for line in maps:
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if fields[1][0] != "r" or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]") or end - start > 1 << 28:
            continue
        data = ctypes.string_at(start, end - start)
        at = data.find(first)
        while at != -1:
            found += data[at + len(first):at + len(first) + len(second)] == second
            at = data.find(first, at + 1)
def seen():
    return found
"""


def test_no_test_text_is_anywhere_in_the_programs_memory(kernel):
    """Not even freed remnants: the zygote reads tests into a buffer it wipes before forking the
    program (kernel sandbox: no audit hook, so the program reads all of its memory with ctypes)."""
    token = "expected-output-" + os.urandom(6).hex()
    earlier = kernel.run("def f():\n    return 1", [f"assert f() == 1, {token!r}"] * 3)
    assert earlier.status == "ok", earlier
    program = MEMORY_SCAN.format(first=token[:9], second=token[9:])
    result = kernel.run(program, [f"assert seen() == 0, {token!r}"])
    assert result.status == "ok", result  # the harness has the token; the program process never did
    # The scan itself works: a token the program holds is found.
    result = kernel.run(f"KEPT = {token[:9]!r} + {token[9:]!r}\n" + program, ["assert seen() > 0"])
    assert result.status == "ok", result


def test_the_audit_hook_refuses_raw_memory(full):
    result = full.run("open('/proc/self/mem', 'rb')")
    assert result.exc_type == "PermissionError", result
    result = full.run("import os\nos.listdir(f'/proc/{os.getpid()}/map_files')\nopen('/proc/thread-self/mem', 'rb')")
    assert result.exc_type == "PermissionError", result


# ---------------------------------------------------------------- the minimal root

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HUMANEVAL = os.path.join(CHECKOUT, "tests", "data", "humaneval", "HumanEval.jsonl.gz")
LOOK_AROUND = r'''
import json, os, sys
found = {}
for path in json.loads(sys.argv[1]):
    try:
        with open(path, "rb") as f:
            found[path] = f.read(64).decode("latin-1")
    except OSError as exc:
        found[path] = exc.errno
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return exc.errno
print(json.dumps({"found": found, "dirs": {d: listing(d) for d in json.loads(sys.argv[2])}}))
'''


@pytest.fixture
def host_files():
    """A world-readable file with a secret in each of /work, /root, /srv, /opt, /home (where they exist)."""
    token = "host-secret-" + os.urandom(6).hex()
    paths = []
    for directory in ("/work", "/root", "/srv", "/opt", "/home"):
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            path = os.path.join(directory, f"cgpo-probe-{os.urandom(6).hex()}")
            with open(path, "w") as f:
                f.write(token)
            os.chmod(path, 0o644)
            paths.append(path)
    yield token, paths
    for path in paths:
        os.remove(path)


@pytest.mark.parametrize("name", ["full", "kernel"])
def test_a_program_sees_nothing_of_the_host_but_system_directories(request, name, host_files):
    """The checkout's test data (HumanEval with its canonical solutions) and files anyone may read
    elsewhere are not in the programs' root at all; of the checkout only the sandbox package is."""
    sandbox = request.getfixturevalue(name)
    token, paths = host_files
    targets = [HUMANEVAL, os.path.join(CHECKOUT, "pyproject.toml"), *paths, "/etc/hostname", "/etc/shadow"]
    here = os.path.dirname(os.path.abspath(sandbox_module.__file__))
    dirs = ["/", "/etc", "/dev", CHECKOUT, os.path.dirname(here), "/home", "/var", "/run"]
    program = f"import sys\nsys.argv = ['look', {json.dumps(targets)!r}, {json.dumps(dirs)!r}]\n{LOOK_AROUND}"
    result = sandbox.run(program)
    assert result.status == "ok", result
    seen = json.loads(result.stdout)
    assert seen["found"] == dict.fromkeys(targets, ENOENT), seen
    assert token not in result.stdout
    listed = seen["dirs"]
    assert set(listed["/"]) <= {"usr", "bin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "tmp",
                                CHECKOUT.split("/")[1], os.path.realpath(sys.base_prefix).split("/")[1],
                                sys.prefix.split("/")[1]}, listed  # the venv's pyvenv.cfg and bin/python
    assert set(listed["/etc"]) <= {"passwd", "group", "nsswitch.conf", "hosts", "ld.so.cache", "localtime",
                                   "alternatives"}, listed
    assert set(listed["/dev"]) <= {"null", "zero", "full", "random", "urandom", "fd", "stdin", "stdout",
                                   "stderr"}, listed
    assert set(listed[CHECKOUT]) <= {"services", ".venv"} and listed[os.path.dirname(here)] == ["sandbox"], listed
    assert listed["/home"] == listed["/var"] == listed["/run"] == ENOENT


def test_interpreters_still_run_in_the_minimal_root(full):
    """The system python3, exec'd, and the sandbox's own interpreter import the standard library
    (C extensions included); /dev works."""
    check = "import json, decimal, sqlite3, zlib, hashlib, ssl, ctypes.util; print(json.dumps(sqlite3.sqlite_version))"
    program = ("import json, subprocess, sys\n"
               f"runs = [subprocess.run([exe, '-c', {check!r}], capture_output=True, text=True, timeout=4)\n"
               f"        for exe in ({PYTHON3!r}, sys.executable)]\n"
               "with open('/dev/urandom', 'rb') as f, open('/dev/null', 'wb') as null:\n"
               "    null.write(f.read(16))\n"
               "print(json.dumps([(r.returncode, r.stdout, r.stderr[-300:]) for r in runs]))")
    result = full.run(program)
    assert result.status == "ok", result
    for returncode, stdout, stderr in json.loads(result.stdout):
        assert returncode == 0 and stdout.strip(), stderr


def test_the_dataset_on_disk_cannot_be_looked_up_by_a_judged_program():
    """A reward hack: find HumanEval on disk and return its canonical solution."""
    lookup = r'''
import gzip, json, os
def _lookup(name):
    for root in (%r, "/work", "/app", "/root", "/home", "/srv", "/opt", "/tmp", os.path.expanduser("~")):
        for dirpath, dirs, files in os.walk(root):
            for f in files:
                if f.startswith("HumanEval") and f.endswith(".jsonl.gz"):
                    for line in gzip.open(os.path.join(dirpath, f), "rt"):
                        p = json.loads(line)
                        if p["entry_point"] == name:
                            ns = {}
                            exec(p["prompt"] + p["canonical_solution"], ns)
                            return ns[name]
%s = _lookup(%r)
'''
    with gzip.open(HUMANEVAL, "rt") as f:
        problems = [json.loads(line) for line in f][100:102]
    judge = CodeJudge(timeout_s=5, workers=1)  # strict
    try:
        judge.setup()
        if judge.unavailable:
            pytest.skip(judge.unavailable)
        verdicts = judge.judge([Sample(p["prompt"], lookup % (CHECKOUT, p["entry_point"], p["entry_point"]),
                                       {"test": p["test"], "entry_point": p["entry_point"]}) for p in problems])
    finally:
        judge.close()
    assert [v.verdict for v in verdicts] == ["fail", "fail"], verdicts


# ---------------------------------------------------------------- not root: what the weak sandbox still holds

SERVICE_SIDE = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])
from cgpo.services.judges.sandbox import Isolation, Limits, Sandbox
from tests.judges.test_sandbox import FORGE_THROUGH_PROC

cases = json.loads(sys.argv[2])
out = {}
with Sandbox(Limits(timeout_s=5), Isolation()) as sandbox:
    zygote = sandbox._proc.pid
    out["isolation"] = sandbox.isolation
    for name, program, tests in cases:
        program = program.replace("SERVICE_PID", str(os.getpid())).replace("ZYGOTE_PID", str(zygote))
        result = sandbox.run(program, tests)
        out[name] = {"status": result.status, "stdout": result.stdout, "stderr": result.stderr[-800:],
                     "same_zygote": getattr(sandbox._proc, "pid", None) == zygote}
with open("/proc/self/stat") as f:
    out["service_state"] = f.read().rsplit(")", 1)[1].split()[0]
print(json.dumps(out))
'''
# Each case is a wrong ``add`` plus an attack on the service that runs it (the sandbox's own process,
# as in a worker): forge a verdict, read its secrets, plant code it will run, take it down.
NOT_ROOT_CASES = {
    "read_the_service": r'''
import os
proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
got = []
for label, opener in (("environ", lambda: os.open("/proc/SERVICE_PID/environ", os.O_RDONLY)),
                      ("environ at", lambda: os.open("SERVICE_PID/environ", os.O_RDONLY, dir_fd=proc)),
                      ("mem", lambda: os.open("/proc/SERVICE_PID/mem", os.O_RDONLY)),
                      ("mem at", lambda: os.open("SERVICE_PID/mem", os.O_RDONLY, dir_fd=proc)),
                      ("fd at", lambda: os.open("SERVICE_PID/fd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=proc))):
    try:
        fd = opener()
        got.append(label)
        print(label, os.read(fd, 100000))
    except OSError:
        pass
print("GOT", got)
''',
    "plant_a_pth_file": r'''
import os
root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
target = "PTH_PATH"
for opener in (lambda: os.open(target, os.O_WRONLY | os.O_CREAT, 0o644),
               lambda: os.open(target.lstrip("/"), os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=root)):
    try:
        os.write(opener(), b"import os; os.system('echo planted')\n")
        print("PLANTED")
    except OSError:
        pass
''',
    "limit_the_zygote": r'''
import os, resource
for pid in (ZYGOTE_PID, SERVICE_PID):
    try:
        resource.prlimit(pid, resource.RLIMIT_CPU, (0, 0))
        print("LIMITED", pid)
    except OSError:
        pass
''',
    "stop_the_service": r'''
import importlib, os, sys
proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
for get_signal in (lambda: (sys.modules.pop("_signal"), __import__("_signal"))[1],
                   lambda: (sys.modules.pop("_signal", None), importlib.import_module("_signal"))[1]):
    try:
        module = get_signal()
    except (ImportError, PermissionError):
        continue
    for opener in (lambda: os.open("/proc/SERVICE_PID", os.O_RDONLY | os.O_DIRECTORY),
                   lambda: os.open("SERVICE_PID", os.O_RDONLY | os.O_DIRECTORY, dir_fd=proc),
                   lambda: importlib.import_module("posix").pidfd_open(SERVICE_PID)):
        try:
            module.pidfd_send_signal(opener(), 19)  # SIGSTOP
            print("STOPPED")
        except (OSError, AttributeError):
            pass
''',
}
NOT_ROOT_CASES["leave_a_tree_behind"] = r'''
import os
print("WORKDIR", os.getcwd())
os.mkdir("x")
for _ in range(1500):  # deeper than recursive removal can go
    os.mkdir("y")
    os.rename("x", "y/x")
    os.rename("y", "x")
os.makedirs("a/b")
os.chmod("a/b", 0)
os.chmod("a", 0)
'''
WRONG_ADD = "\ndef add(a, b):\n    return a - b\n"
ADD_TESTS = ["assert add(1, 2) == 3"]


def _run_as_nobody(tmp: str, cases: dict[str, str], env: dict[str, str]) -> dict:
    """The service side, as uid 65534 in a mount namespace of its own that only re-exposes the
    interpreter (when under a 0700 directory such as /root/.pyenv): the non-root Docker mode."""
    base = os.path.realpath(sys.base_prefix)
    closed = next((a for a in (base[:i] for i in range(len(base)) if base[i] == "/" and i)
                   if not os.stat(a).st_mode & 0o001), None)
    expose = ""
    if closed is not None:
        stash = os.path.join(tmp, "stash")
        os.mkdir(stash)
        expose = (f"mount --bind {base} {stash} && mount -t tmpfs -o mode=755 tmpfs {closed} && "
                  f"mkdir -p {base} && mount --move {stash} {base} && ")
    script = os.path.join(tmp, "service.py")
    with open(script, "w") as f:
        f.write(SERVICE_SIDE)
    variables = " ".join(f"{k}={v}" for k, v in env.items())
    command = (expose + "exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/bin:/bin "
               f"PYTHONDONTWRITEBYTECODE=1 {variables} {sys.executable} {script} \"$@\"")
    payload = json.dumps([[name, program + WRONG_ADD, ADD_TESTS] for name, program in cases.items()])
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command, "sh", CHECKOUT, payload],
                          capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
                    reason="emulating the non-root mode needs root, unshare and setpriv")
def test_not_root_the_service_stays_out_of_reach():
    """Reproductions of what got through as non-root: each program fails, finds nothing, and leaves
    the service running and the zygote serving."""
    tmp = tempfile.mkdtemp(prefix="cgpo-nobody-")
    os.chmod(tmp, 0o755)
    home = os.path.join(tmp, "home")
    os.mkdir(home)
    os.chown(home, 65534, 65534)
    pth = os.path.join(home, ".local", "lib", "python3", "site-packages", "zz.pth")
    os.makedirs(os.path.dirname(pth))
    for directory in (os.path.join(home, ".local"), os.path.dirname(os.path.dirname(pth)), os.path.dirname(pth)):
        os.chown(directory, 65534, 65534)
    secret = "cgpo-secret-" + os.urandom(6).hex()
    cases = {name: program.replace("PTH_PATH", pth) for name, program in NOT_ROOT_CASES.items()}
    cases["forge_through_proc_fd"] = FORGE_THROUGH_PROC.format(service="SERVICE_PID", zygote="ZYGOTE_PID")
    cases["after_the_forgery"] = ""
    try:
        out = _run_as_nobody(tmp, cases, {"HOME": home, "CGPO_API_KEYS": secret})
    finally:
        planted = os.path.exists(pth)
        shutil.rmtree(tmp, ignore_errors=True)
    assert out["isolation"]["uid"] is None and out["isolation"]["service_nondumpable"], out["isolation"]
    assert out["isolation"]["seccomp"], out["isolation"]
    for name in cases:
        assert out[name]["status"] == "exception" and out[name]["same_zygote"], (name, out[name])
    assert secret not in json.dumps(out) and "GOT []" in out["read_the_service"]["stdout"], out["read_the_service"]
    assert "PLANTED" not in out["plant_a_pth_file"]["stdout"] and not planted
    assert "LIMITED" not in out["limit_the_zygote"]["stdout"]
    assert "STOPPED" not in out["stop_the_service"]["stdout"] and out["service_state"] != "T"
    assert json.loads(out["forge_through_proc_fd"]["stdout"]) == [], out["forge_through_proc_fd"]
    workdir = out["leave_a_tree_behind"]["stdout"].split()[1]
    assert workdir.startswith("/tmp/") and not os.path.exists(workdir)
