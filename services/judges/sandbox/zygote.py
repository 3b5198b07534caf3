"""The zygote: privileged one-time setup, then a loop that serves one run per request.

``Sandbox`` launches this file as ``python -I -S zygote.py --zygote <Isolation>``:
``_bootstrap`` claims a uid and enters namespaces, then re-execs it with
``--serve <state>`` (so no ctypes handle survives into the children). Standard
library only; the modules the children start with are imported here, before any fork.
"""

from __future__ import annotations

import json
import os
import sys

if __package__:  # imported as services.judges.sandbox.zygote
    from .protocol import SandboxError, read_frame, write_frame
    from .supervisor import kill_uid, run_one
else:
    # Run as a script: python -I (3.11+: implies -P) leaves this directory off sys.path.
    # Add it just to import the siblings, so the programs' sys.path stays the stdlib's.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from protocol import SandboxError, read_frame, write_frame
    from supervisor import kill_uid, run_one
    del sys.path[0]

# Imported once by the zygote so children start with them loaded (copy-on-write).
_PRELOAD = (
    "abc array bisect cmath collections contextlib copy dataclasses datetime decimal enum "
    "fractions functools hashlib heapq itertools json math numbers operator random re "
    "statistics string struct textwrap time traceback types typing unicodedata linecache fcntl "
    "errno tempfile shutil threading"
).split()


# ============================================================== bootstrap


def _bootstrap(config: dict) -> None:
    """Privileged one-time setup, then exec the serving zygote (drops ctypes)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    state = {"root": os.geteuid() == 0, "uid": None, "gid": None, "lock_fd": None, "audit_hook": config["audit_hook"],
             "netns": False, "mountns": False, "ro_root": False, "subreaper": False}
    if state["root"] and config["drop_privileges"]:
        state["uid"], state["lock_fd"] = _claim_uid(config)
        state["gid"] = state["uid"]
        kill_uid(state["uid"])  # leftovers of a zygote that died holding this uid
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
    # The interpreter or this package may live under /tmp (a checkout in /tmp): hold those trees by fd,
    # so they can be bound back, read-only, into the private /tmp that is about to hide them.
    held = [(top, os.open(top, os.O_PATH | os.O_DIRECTORY)) for top in _under_tmp(_needed_paths())]
    if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", ms_nosuid | ms_nodev, options) != 0:
        raise SandboxError(f"cannot mount a private /tmp (errno {ctypes.get_errno()}); "
                           "use Isolation(namespaces=False)")
    ms_bind, ms_remount, ms_rdonly = 4096, 32, 1
    for top, fd in held:
        os.makedirs(top, mode=0o755, exist_ok=True)
        if libc.mount(f"/proc/self/fd/{fd}".encode(), top.encode(), None, ms_bind | ms_rec, None) == 0:
            libc.mount(None, top.encode(), None, ms_remount | ms_bind | ms_rdonly | ms_nosuid | ms_nodev, None)
        os.close(fd)
    if not state["ro_root"]:  # old kernel: at least hide the other world-writable places
        for target in (b"/var/tmp", b"/dev/shm"):
            if os.path.isdir(target):
                libc.mount(b"tmpfs", target, b"tmpfs", ms_nosuid | ms_nodev, options)
    _expose_python(libc, ms_nosuid | ms_nodev)


def _needed_paths() -> set[str]:
    """The directories the zygote and the sandboxed interpreter read: the venv, the Python install,
    and the checkout this package is imported from."""
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))  # holds pyvenv.cfg
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(here)))  # above services/judges/sandbox
    needed = {venv, sys.prefix, sys.base_prefix, here, checkout}
    return needed | {os.path.realpath(p) for p in needed}


def _under_tmp(paths: set[str]) -> list[str]:
    """The top-level directories under /tmp that hold any of ``paths``."""
    return sorted({"/tmp/" + p.split("/")[2] for p in paths if p.startswith("/tmp/") and len(p.split("/")) > 2})


def _expose_python(libc, flags: int) -> None:
    """Keep the interpreter, the stdlib and this package reachable under a closed dir (/root/.pyenv).

    The zygote re-execs itself and the sandbox uid imports stdlib modules, but a parent
    directory may be 0700. In our mount namespace only: a tmpfs (0755) over the outermost
    closed ancestor, with each needed path bound back at its own place.
    """
    needed = _needed_paths()
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


# ============================================================== serving


def _serve(state: dict) -> None:
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    isolation = {key: state[key] for key in ("root", "uid", "netns", "mountns", "ro_root", "subreaper", "audit_hook")}
    isolation["stdlib_readable"] = _stdlib_readable(state)
    write_frame(1, {"isolation": isolation})
    while True:
        try:
            request = read_frame(0)
        except SandboxError:  # the service went away
            return
        write_frame(1, run_one(request, state))


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
