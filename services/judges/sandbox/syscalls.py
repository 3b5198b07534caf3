"""The seccomp filter of the zygote and everything it forks, built with libseccomp (via pyseccomp).

Loaded once, by the zygote's bootstrap, after the namespaces and mounts are set
up and right before it execs the serving zygote: with no_new_privs a filter
survives execve and is inherited by every fork, so the harness, the program and
anything the program execs (a fresh ``python3`` without our audit hook) run
under it. The zygote itself needs none of what it denies (it learns of its
children's ends from SIGCHLD, not from pidfds).

Default allow; denied with EPERM (ENOSYS for clone3, so libc falls back to
clone, whose flags a filter can inspect):
  * new namespaces and mounts: unshare, setns, clone with any CLONE_NEW* flag,
    mount & co., pivot_root, chroot — no user namespace with full capabilities;
  * other processes: ptrace, process_vm_readv/writev, pidfd_open, pidfd_getfd,
    pidfd_send_signal, process_madvise, kcmp, and prlimit64 on any pid but 0 (the
    caller): where the programs share a uid with the service (no root) these would
    reach the service's memory, descriptors, signals and limits past the audit hook;
  * sockets other than AF_UNIX (EAFNOSUPPORT), and connect, bind, listen,
    accept, sendmsg, and sendto with an address: socketpair still works, nothing
    on this host or elsewhere can be reached, even where a mount or network
    namespace is not available;
  * kernel attack surface a test program never needs: bpf, perf_event_open,
    userfaultfd, io_uring (it would bypass the socket rules), keyrings,
    open_by_handle_at, kexec, modules, reboot, swap, clock setting, TIOCSTI.
Foreign-architecture syscalls (i386 via int 0x80, x32) kill the process:
libseccomp's bad-architecture action, set here to KILL_PROCESS.

Standard library only plus the pyseccomp module passed in (the zygote runs with
``-I -S``; ``zygote.py`` loads pyseccomp from the path the service found).
"""

from __future__ import annotations

import errno

_DENIED = (
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "kcmp",
    "process_madvise",
    "connect", "bind", "listen", "accept", "accept4", "sendmsg", "sendmmsg",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "fanotify_init", "open_by_handle_at", "name_to_handle_at",
    "lookup_dcookie", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "iopl", "ioperm",
    "uselib", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "nfsservctl", "_sysctl",
)
_CLONE_NEW = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME."""
_AF_UNIX = 1
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C


def load(pyseccomp) -> list[str]:
    """Build and load the filter into this process; returns the denied syscalls this libseccomp
    does not know (skipped). Raises OSError if the kernel refuses the filter."""
    sc = pyseccomp
    deny = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(sc.ALLOW)
    rules.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    unknown = []

    def add(action: int, name: str, *args) -> None:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number == -1:  # __NR_SCMP_ERROR: this libseccomp has never heard of it
            unknown.append(name)
            return
        rules.add_rule(action, number, *args)

    for name in _DENIED:
        add(deny, name)
    add(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, _AF_UNIX))
    add(deny, "sendto", sc.Arg(4, sc.NE, 0))
    add(deny, "prlimit64", sc.Arg(0, sc.NE, 0))  # setrlimit/getrlimit are prlimit64(0, ...) in libc
    for flag in _CLONE_NEW:
        add(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    add(sc.ERRNO(errno.ENOSYS), "clone3")
    for request in (_TIOCSTI, _TIOCLINUX):
        add(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    rules.load()
    return sorted(set(unknown))
