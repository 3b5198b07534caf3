"""The minimal root the zygote pivots into, in a mount namespace of its own (bootstrap only, as root).

A fresh tmpfs becomes ``/``. It holds only what a run needs, each piece at its host path, bound
read-only (and nosuid, nodev):
  * the system directories the interpreters and their libraries live in: /usr and whichever of
    /bin, /lib, /lib32, /lib64, /libx32 exist (symlinks where the host has symlinks: usrmerge);
  * a generated /etc: passwd, group, nsswitch.conf and hosts naming only what the sandbox needs,
    plus the host's ld.so.cache, localtime and alternatives links. Not the host's /etc itself:
    a deployment's /etc may hold world-readable configuration with credentials in it;
  * the Python installation (``sys.base_prefix``) with its site-packages covered by an empty
    tmpfs, and of the venv (if any) only ``pyvenv.cfg`` and the ``bin/python*`` entries;
  * of the checkout, only this package's directory (the serving zygote is exec'd from it);
  * a /dev with null, zero, full, random and urandom (and fd, stdin, stdout, stderr links), a /proc
    of the new PID namespace (``hidepid=invisible,subset=pid``) and a private, writable /tmp.
Host sockets that still lie inside a bound tree are covered by an empty file. Then ``pivot_root``
and a lazy unmount of the old root: nothing else of the host's filesystem (the checkout and its
test data, /home, /root, /srv, /opt, /var, /run, ...) is reachable from this mount namespace.
Like every module the zygote loads, it works both as a package module and as a plain sibling.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

if __package__:
    from .protocol import SandboxError
else:  # a plain sibling module inside the zygote
    from protocol import SandboxError

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 8, 32, 4096, 1 << 14
_MNT_DETACH = 2
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_SYS_MOUNT_SETATTR = 442  # the same on every architecture (Linux >= 5.12)
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/libx32")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_STAGE = "/tmp"  # the new root's tmpfs is mounted here (in this mount namespace only) before the pivot
_FILES_MODE = 0o644


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clr", "propagation", "userns_fd")]


def build(libc, uids: list[int], tmpfs_mb: int, sockets: list[str]) -> dict:
    """Build the minimal root and pivot into it; what it achieved, or SandboxError naming the step
    that failed (the mount namespace is then half built: the zygote must not serve from it)."""
    plan = _plan(uids, tmpfs_mb)
    held = {source: os.open(source, os.O_PATH | os.O_CLOEXEC) for source in plan["sources"]}
    try:
        _mount(libc, b"tmpfs", _STAGE, b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=16m,nr_inodes=16384,mode=0755")
        # Parents first: /tmp, say, before a checkout bound back inside it.
        for target, kind, value in sorted(plan["entries"], key=lambda entry: entry[0].count("/")):
            _place(libc, target, kind, value, held)
        proc = _mount_proc(libc)
        for target in plan["covers"]:
            _mount(libc, None, _STAGE + target, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    finally:
        for fd in held.values():
            os.close(fd)
    _pivot(libc)
    covered = _cover_sockets(libc, sockets)
    _mount(libc, None, "/", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    if not os.access(sys.executable, os.X_OK) or not os.path.isdir(os.path.dirname(os.__file__)):
        raise SandboxError(f"the interpreter ({sys.executable}) or its standard library is missing from the root")
    return {"minimal_root": True, "ro_root": True, "proc_hidepid": proc, "hidden_sockets": covered}


# ============================================================== what goes in


def _plan(uids: list[int], tmpfs_mb: int) -> dict:
    """entries: (path, kind, value) with kind "bind" (a host path), "device", "link" (its text),
    "file" (bytes), "tmpfs" (its options) or "cover" (an empty tmpfs, made read-only last);
    sources: the host paths bound."""
    entries: list[tuple[str, str, object]] = [("/tmp", "tmpfs", f"size={tmpfs_mb}m,nr_inodes=16384,mode=0755")]
    bound: list[str] = []  # trees visible as they are on the host

    def bind(path: str) -> None:
        if not _inside_any(path, bound):
            entries.append((path, "bind", path))
            bound.append(path)

    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            entries.append((path, "link", os.readlink(path)))
        elif os.path.isdir(path):
            bind(path)
    for prefix in {sys.base_prefix, os.path.realpath(sys.base_prefix)}:
        bind(prefix)
    here = os.path.dirname(os.path.abspath(__file__))
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))  # with -S, sys.prefix is not it
    venv = venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else None
    site = os.path.join(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(here)))  # the directory holding services/
    covers = sorted({p for p in (site, package_root, venv) if p and os.path.isdir(p) and _inside_any(p, bound)})
    entries += [(path, "cover", None) for path in covers]
    entries.append((here, "bind", here))
    if venv is not None:
        entries += _venv_entries(venv)
    entries += _etc_entries(uids)
    entries += [(f"/dev/{name}", "device", f"/dev/{name}") for name in _DEVICES if os.path.exists(f"/dev/{name}")]
    entries += [("/dev/fd", "link", "/proc/self/fd")]
    entries += [(f"/dev/{name}", "link", f"/proc/self/fd/{fd}")
                for fd, name in enumerate(("stdin", "stdout", "stderr"))]
    sources = {value for _, kind, value in entries if kind in ("bind", "device")}
    return {"entries": entries, "sources": sorted(sources), "covers": covers}


def _venv_entries(venv: str) -> list[tuple[str, str, object]]:
    """pyvenv.cfg and bin/python* (links as links, a copied interpreter bound): no site-packages."""
    entries: list[tuple[str, str, object]] = []
    config = os.path.join(venv, "pyvenv.cfg")
    if os.path.isfile(config):
        with open(config, "rb") as f:
            entries.append((config, "file", f.read()))
    bin_dir = os.path.join(venv, "bin")
    for entry in os.scandir(bin_dir) if os.path.isdir(bin_dir) else ():
        if entry.name.startswith("python"):
            if entry.is_symlink():
                entries.append((entry.path, "link", os.readlink(entry.path)))
            elif entry.is_file():
                entries.append((entry.path, "bind", entry.path))
    return entries


def _etc_entries(uids: list[int]) -> list[tuple[str, str, object]]:
    users = [("root", 0), ("nobody", 65534)] + [(f"sandbox{i}", uid) for i, uid in enumerate(uids)]
    passwd = "".join(f"{name}:x:{uid}:{uid}:{name}:/:/usr/sbin/nologin\n" for name, uid in users)
    group = "".join(f"{name}:x:{uid}:\n" for name, uid in users)
    entries: list[tuple[str, str, object]] = [
        ("/etc/passwd", "file", passwd.encode()), ("/etc/group", "file", group.encode()),
        ("/etc/nsswitch.conf", "file", b"passwd: files\ngroup: files\nhosts: files\n"),
        ("/etc/hosts", "file", b"127.0.0.1 localhost\n::1 localhost\n"),
    ]
    if os.path.isfile("/etc/ld.so.cache"):
        with open("/etc/ld.so.cache", "rb") as f:
            entries.append(("/etc/ld.so.cache", "file", f.read()))
    if os.path.islink("/etc/localtime"):
        entries.append(("/etc/localtime", "link", os.readlink("/etc/localtime")))
    if os.path.isdir("/etc/alternatives"):  # links into /usr (python3 goes through them on some distributions)
        entries += [(entry.path, "link", os.readlink(entry.path))
                    for entry in os.scandir("/etc/alternatives") if entry.is_symlink()]
    return entries


def _inside_any(path: str, trees: list[str]) -> bool:
    return any(path == tree or path.startswith(tree.rstrip("/") + "/") for tree in trees)


# ============================================================== putting it in place


def _place(libc, target: str, kind: str, value: object, held: dict[str, int]) -> None:
    path = _STAGE + target
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)
    if kind == "link":
        os.symlink(value, path)
    elif kind == "file":
        with open(path, "xb") as f:
            f.write(value)
        os.chmod(path, _FILES_MODE)
    elif kind in ("cover", "tmpfs"):
        os.makedirs(path, mode=0o755, exist_ok=True)
        options = b"size=1m,nr_inodes=1024,mode=0755" if kind == "cover" else value.encode()
        _mount(libc, b"tmpfs", path, b"tmpfs", _MS_NOSUID | _MS_NODEV, options)
    else:  # "bind" or "device": a directory or a file, held open since before the stage hid /tmp
        source = f"/proc/self/fd/{held[value]}"
        if stat.S_ISDIR(os.stat(source).st_mode):
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        _mount(libc, source, path, None, _MS_BIND | _MS_REC)
        if kind == "device":  # usable (no nodev), nothing to execute; writes to /dev/null must work
            _mount(libc, None, path, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NOEXEC)
        else:
            _make_read_only(libc, path)


def _make_read_only(libc, path: str) -> None:
    """Read-only, nosuid, nodev: recursively (mount_setattr) where the kernel has it."""
    attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, 0)
    if libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path.encode(), _AT_RECURSIVE,
                    ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        _mount(libc, None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _mount_proc(libc) -> bool:
    """A /proc of this PID namespace in which a uid sees its own processes only; False (and an empty
    /proc) where the kernel refuses one, e.g. over a masked host /proc."""
    os.makedirs(_STAGE + "/proc", mode=0o555)
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    return any(libc.mount(b"proc", (_STAGE + "/proc").encode(), b"proc", flags, options) == 0
               for options in (b"hidepid=invisible,subset=pid", b"hidepid=2"))


def _pivot(libc) -> None:
    """Make the stage the root and detach the old one (pivot_root(".", "."), see pivot_root(2))."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SandboxError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    os.chdir(_STAGE)
    if libc.syscall(number, b".", b".") != 0:
        raise SandboxError(f"pivot_root failed (errno {ctypes.get_errno()})")
    if libc.umount2(b".", _MNT_DETACH) != 0:
        raise SandboxError(f"cannot detach the old root (errno {ctypes.get_errno()})")
    os.chdir("/")


def _cover_sockets(libc, sockets: list[str]) -> int:
    """Bind an empty file over every host socket still reachable in a bound tree; how many."""
    empty = "/tmp/.cover"
    os.close(os.open(empty, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0))
    covered = 0
    for path in sockets:
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue  # not in the minimal root
        _mount(libc, empty.encode(), path, None, _MS_BIND)
        _mount(libc, None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        covered += 1
    os.unlink(empty)
    return covered


def _mount(libc, source, target, fstype, flags: int, options: bytes | None = None) -> None:
    def encode(v):
        return v.encode() if isinstance(v, str) else v

    if libc.mount(encode(source), encode(target), encode(fstype), flags, options) != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"mount {source!r} on {target!r} failed (errno {errno}): "
                           "the minimal root needs CAP_SYS_ADMIN without seccomp/AppArmor confinement")
