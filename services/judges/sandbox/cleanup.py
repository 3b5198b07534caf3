"""After a run, from the zygote's side: kill and reap what it left, remove its directory.

Runs inside the zygote only. Like every module the zygote loads, it works both as
``cgpo.services.judges.sandbox.cleanup`` and as a plain sibling (see ``zygote.py``).
Nothing here may raise for anything a program can leave behind: a tree too deep for
recursion or for PATH_MAX, directories chmod 000, hundreds of thousands of files.
"""

from __future__ import annotations

import errno
import os
import signal
import time

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_TAKEN = frozenset({errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR})


def kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except OSError:
            pass


def reap_leftovers(pids: tuple[int, ...], state: dict) -> None:
    """Kill and reap every process the run left behind (including ones that called setsid)."""
    for pid in pids:
        kill_group(pid)
    deadline = time.monotonic() + 5.0
    swept = False
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # as subreaper, every surviving descendant would be our child
        if waited:
            continue
        sweep(state)
        swept = True
        time.sleep(0.001)
    if state["uid"] is not None and (swept or not state["subreaper"]):
        kill_uid(state["uid"])  # catches processes not reparented to us
        kill_uid(state["harness_uid"])


def sweep(state: dict, spare: int | None = None) -> None:
    """Kill what escaped the program's group: all of its uid, else our (subreaper) children but ``spare``."""
    if state["uid"] is not None:
        kill_uid(state["uid"])
    else:
        for child in _children_of(os.getpid()):
            if child != spare:
                kill_group(child)


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


def remove_tree(path: str) -> bool:
    """Remove ``path`` and everything under it; True when it is gone.

    Iterative, with at most two descriptors open however deep the tree: every directory met is
    emptied — files unlinked, subdirectories moved up into ``path`` itself under fresh names — and
    then removed, so ``path`` is walked level by level. Names are resolved one component at a time
    against a descriptor (no path grows), no link is followed, and a directory a program made
    unreadable or unwritable is given back 0700 first. Run after every process of the run is dead.
    """
    try:
        os.rmdir(path)  # the common case: the program left nothing behind
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.chmod(path, 0o700)
        top = os.open(path, _DIRECTORY)
    except OSError:
        return False
    try:
        moves = [0]
        while names := os.listdir(top):
            removed = 0
            for name in names:
                try:
                    _remove_entry(top, name, moves)
                    removed += 1
                except OSError:
                    continue
            if not removed:
                return False  # nothing left that can be removed: the caller replaces the zygote
    except OSError:
        return False
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


def _remove_entry(top: int, name: str, moves: list[int]) -> None:
    """Unlink ``name`` (in ``top``), or, for a directory: unlink its files, move its subdirectories
    up into ``top``, remove it."""
    try:
        os.unlink(name, dir_fd=top)
        return
    except IsADirectoryError:  # a real directory: a link to one was unlinked just above
        pass
    os.chmod(name, 0o700, dir_fd=top)
    directory = os.open(name, _DIRECTORY, dir_fd=top)
    try:
        for child in os.listdir(directory):
            try:
                os.unlink(child, dir_fd=directory)
            except IsADirectoryError:
                _move_up(directory, child, top, moves)
    finally:
        os.close(directory)
    os.rmdir(name, dir_fd=top)


def _move_up(directory: int, name: str, top: int, moves: list[int]) -> None:
    """Rename a subdirectory into ``top`` under a name not taken there (the program may have taken
    some: each one taken costs a try, so this ends). Moving a directory rewrites its "..": without
    root that takes write permission on it, so it gets 0700 first."""
    os.chmod(name, 0o700, dir_fd=directory)
    while True:
        moves[0] += 1
        try:
            os.rename(name, f".cgpo-rm-{moves[0]}", src_dir_fd=directory, dst_dir_fd=top)
            return
        except OSError as exc:
            if exc.errno not in _NAME_TAKEN:
                raise
