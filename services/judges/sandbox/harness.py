"""The test harness (trusted): run the tests against the program process, report the outcome.

Runs inside the zygote only, in a process forked for one run before the program
process exists. Like every module the zygote loads, it works both as
``cgpo.services.judges.sandbox.harness`` and as a plain sibling (see ``zygote.py``).

The harness holds the only write end of the report channel; the program process
never has it. It runs the tests in a fresh namespace built from the program's
manifest (see ``remote``): plain values are decoded copies, a module global is
this process's own import of the standard-library module of that name (so is any
global the tests use as a module, ``math.isclose``, whatever the program bound to
it), and everything else is a ``Remote`` proxy whose calls, attributes, items,
length, truth, text and iteration go to the program process — but whose ``==``
and ``hash`` are identity, so an object that claims to equal everything equals
nothing here. Program globals never shadow builtins (``abs``, ``isinstance``,
``AssertionError`` ...) except the declared entry point, which must exist and be
callable. Names the tests define themselves (helpers in HumanEval's ``test``)
override the program's. If the program dies, exits or breaks the protocol during a
test, ``ProgramGone`` (a ``BaseException``) is raised and the run fails whatever
the test catches.

Descriptors: 0 /dev/null, 1 stdout, 2 stderr, 3 report out, 4 requests out, 5 replies in (3-5: sockets).
"""

from __future__ import annotations

import builtins
import json
import os
import re
import sys

if __package__:
    from . import confine
    from .protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, Limits
    from .remote import BUILTIN_NAMES, TEXT_MAX, Channel, ProgramGone, Remote, RemoteError
    from .wire import standard_module
else:  # a plain sibling module inside the zygote
    import confine
    from protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, Limits
    from remote import BUILTIN_NAMES, TEXT_MAX, Channel, ProgramGone, Remote, RemoteError
    from wire import standard_module

REPORT_FD, REQUESTS_FD, REPLIES_FD = 3, 4, 5
_ATTRIBUTE_BASE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\.\s*[A-Za-z_]")


def run_harness(request: dict, tests: bytearray, limits: Limits, state: dict, workdir: str, fds: list[int],
                nproc: int) -> None:
    """In the forked harness process: enter the sandbox, run the tests (a JSON list of sources),
    report, ``_exit``. Never returns."""
    exit_code = EXIT_SETUP_FAILED
    try:
        confine.enter(limits, fds, uid=state["harness_uid"], workdir=workdir, home="/", nproc=nproc,
                      audit_hook=state["audit_hook"], allow_exec=False, allow_fork=False)
        exit_code = 0
        outcome = run_tests(json.loads(tests), request.get("entry_point"))
        _flush()
        os.write(REPORT_FD, json.dumps(outcome).encode() + b"\n")
    except MemoryError:
        exit_code = EXIT_OUT_OF_MEMORY
    except BaseException:  # noqa: BLE001 - report how setup failed, then exit
        try:
            import traceback

            os.write(2, traceback.format_exc()[-2000:].encode())
        except BaseException:  # noqa: BLE001
            pass
    os._exit(exit_code)


def run_tests(tests: list[str], entry_point: str | None) -> dict:
    """The outcome of the run: ``{"status": "ok"}`` or what failed where (stage 0 is the program)."""
    _stage(0)
    channel = Channel(REQUESTS_FD, REPLIES_FD)
    try:
        manifest = channel.first()
    except ProgramGone:
        return channel.failure | {"failed_test": None}
    if manifest[0] == "failed":
        return manifest[1] | {"failed_test": None}
    try:
        namespace = build_namespace(channel, manifest[1], entry_point, _module_names(tests))
        missing = missing_entry_point(channel, namespace, entry_point)
    except ProgramGone:
        return channel.failure | {"failed_test": None}
    if missing is not None:
        return {"status": "missing_function", "failed_test": None, "message": missing}
    for index, source in enumerate(tests):
        _stage(index + 1)
        try:
            code = compile(source, f"<test {index}>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:  # only here is a SyntaxError the dataset's fault
            return describe(exc, index, tests) | {"bad_test": True}
        outcome = None
        try:
            exec(code, namespace)  # noqa: S102
        except ProgramGone as exc:
            outcome = describe(exc, index, tests)
        except MemoryError:
            outcome = {"status": "memory", "failed_test": index, "exc_type": "MemoryError", "message": "out of memory"}
        except BaseException as exc:  # noqa: BLE001 - the test's failure is the result
            outcome = describe(exc, index, tests)
        if channel.failure is not None:  # sticky: whatever the test code caught
            return (outcome or {}) | channel.failure | {"failed_test": index}
        if outcome is not None:
            return outcome
    return {"status": "ok"}


def _stage(stage: int) -> None:
    os.write(REPORT_FD, b'{"stage": %d}\n' % stage)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a test may have closed its streams
            pass


# ============================================================== the namespace the tests run in


def build_namespace(channel: Channel, entries: list, entry_point: str | None, module_names: set[str]) -> dict:
    """The tests' globals: the program's top-level names, decoded here.

    A name that shadows a builtin is left out (the tests keep the real ``abs``, ``isinstance``,
    ``AssertionError``...) unless it is ``entry_point``. A name the tests use as a module
    (``math.isclose``), or that is a module in the program, is this process's own import of the
    standard-library module of that name, whatever the program's value (a module, an object, or
    plain data like a namedtuple of lambdas or of ``complex``) — unless it is ``entry_point``.
    """
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    hidden = []
    for name, data in entries:
        if name in BUILTIN_NAMES and name != entry_point:
            hidden.append(name)
            continue
        if name != entry_point and (data == ["m"] or name in module_names):
            try:
                namespace[name] = standard_module(name)
                continue
            except LookupError:
                pass
        if data == ["m"]:
            continue  # an alias (np, m), a module this process cannot import: the tests do without
        namespace[name] = channel.decode(data)
    if hidden:
        sys.stderr.write(f"note: program names that shadow builtins are not visible to the tests: "
                         f"{', '.join(sorted(hidden))[:500]}\n")
    return namespace


def missing_entry_point(channel: Channel, namespace: dict, entry_point: str | None) -> str | None:
    """Why the declared function under test is not there (None when it is, or none is declared)."""
    if entry_point is None:
        return None
    if entry_point not in namespace:
        return f"the program defines no {entry_point!r}"
    value = namespace[entry_point]
    callable_ = channel.ask("callable", value) if type(value) is Remote else callable(value)
    if callable_ is not True:
        return f"the program's {entry_point!r} is not a function"
    return None


def _module_names(tests: list[str]) -> set[str]:
    """Standard-library module names the tests use as ``name.attribute`` (a superset, from text:
    a name matched inside a string only replaces a program global the tests do not use)."""
    names = set()
    for source in tests:
        names.update(_ATTRIBUTE_BASE.findall(source))
    return names & sys.stdlib_module_names


# ============================================================== reporting a failed test


def describe(exc: BaseException, index: int, tests: list[str]) -> dict:
    """A failed test's report; prints a traceback limited to the sandboxed sources on stderr."""
    import errno
    import traceback

    lines = {f"<test {i}>": source.splitlines() for i, source in enumerate(tests)}

    def text(name: str, lineno: int | None) -> str:
        return lines[name][lineno - 1].strip() if lineno and 0 < lineno <= len(lines[name]) else ""

    frames = [(f.filename, f.lineno or 0, text(f.filename, f.lineno))
              for f in traceback.extract_tb(exc.__traceback__) if f.filename in lines]
    if isinstance(exc, SyntaxError) and exc.filename in lines:  # its location is not a frame
        frames.append((exc.filename, exc.lineno or 0, (exc.text or "").strip()))
    frames += getattr(exc, "remote_frames", [])
    name = exc.type_name if isinstance(exc, RemoteError) else type(exc).__name__
    try:
        message = str(exc)[:TEXT_MAX]
    except BaseException:  # noqa: BLE001 - a test's own exception with a broken __str__
        message = "<unprintable>"
    stack = "".join(f'  File "{f}", line {n}\n    {line}\n' for f, n, line in frames)
    summary = f"{name}: {message}\n" if message else f"{name}\n"
    try:
        sys.stderr.write(f"Traceback (most recent call last):\n{stack}{summary}" if stack else summary)
    except BaseException:  # noqa: BLE001
        pass
    status = "file_size" if isinstance(exc, OSError) and exc.errno == errno.EFBIG else "exception"
    return {"status": status, "failed_test": index, "exc_type": name, "message": message,
            "traceback": frames[-20:]}
