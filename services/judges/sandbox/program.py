"""The program process (untrusted): run the response's code as ``__main__``, then answer the harness.

Runs inside the zygote only, in a process forked for one run. Like every module
the zygote loads, it works both as ``cgpo.services.judges.sandbox.program`` and as a
plain sibling (see ``zygote.py``).

Once the program starts, everything in this process is the program's to change,
this module included: the harness believes nothing it is told beyond plain data
(see ``wire``) and never takes a verdict from here. What this side provides to
honest programs: the program's top-level names (a *manifest*), then one answer
per request, in order — call, attribute, item, length, truth, text, iteration,
callability — with every result encoded as plain data or as a handle to an object
kept here.

Descriptors: 0 /dev/null, 1 stdout, 2 stderr, 3 requests in, 4 replies out (sockets,
shut for writing and for reading respectively). The first reply is ["ready"], sent
once this process is in the sandbox and before the program runs.
"""

from __future__ import annotations

import builtins
import os
import sys

if __package__:
    from . import confine
    from .protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, Limits
    from .wire import MAX_NODES, Decoder, Encoder, FrameReader, WireError, is_plain_type, send, standard_name
else:  # a plain sibling module inside the zygote
    import confine
    from protocol import EXIT_OUT_OF_MEMORY, EXIT_SETUP_FAILED, Limits
    from wire import MAX_NODES, Decoder, Encoder, FrameReader, WireError, is_plain_type, send, standard_name

REQUESTS_FD, REPLIES_FD = 3, 4
MAX_HANDLES = 100_000
MANIFEST_NODES = 10_000
"""A top-level value bigger than this is offered to the tests as a handle, not copied."""
_MUTABLE_TAGS = ("l", "d", "s", "ba")  # arguments whose in-place changes are copied back


def run_program(source: bytearray, limits: Limits, state: dict, workdir: str, fds: list[int], nproc: int) -> None:
    """In the forked program process: enter the sandbox, run, serve, ``_exit``. Never returns.

    This process is forked from a zygote that never held the tests in its memory (they were
    read into a buffer wiped before this fork): there is nothing to find by reading it."""
    program = source.decode("utf-8", "surrogatepass")
    exit_code = EXIT_SETUP_FAILED
    try:
        confine.enter(limits, fds, uid=state["uid"], workdir=workdir, home=workdir, nproc=nproc,
                      audit_hook=state["audit_hook"], allow_exec=state["uid"] is not None,
                      # root keeping its uid is not bound by RLIMIT_NPROC: no fork at all then
                      allow_fork=state["uid"] is not None or not state["root"])
        exit_code = 1  # from here on, an exception is the program breaking this process
        # Before any of the program runs: from now on an exit code (71 included) is the program's.
        send(REPLIES_FD, ["ready"])
        _run(program)
        exit_code = 0
    except MemoryError:
        exit_code = EXIT_OUT_OF_MEMORY
    except BaseException:  # noqa: BLE001 - report how setup failed, then exit
        try:
            import traceback

            os.write(2, traceback.format_exc()[-2000:].encode())
        except BaseException:  # noqa: BLE001
            pass
    os._exit(exit_code)


def _run(program: str) -> None:
    import linecache
    import types

    lines = program.splitlines()
    linecache.cache["<program>"] = (len(program), None, program.splitlines(True), "<program>")
    server = Server(lines)
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    # The program gets a builtins module of its own: patching it (builtins.isinstance = ...) changes
    # what the program sees, not what this process's server code uses to answer the harness.
    own = types.ModuleType("builtins", builtins.__doc__)
    own.__dict__.update(builtins.__dict__)
    sys.modules["builtins"] = module.__dict__["__builtins__"] = own
    try:
        exec(compile(program, "<program>", "exec", dont_inherit=True), module.__dict__)  # noqa: S102
    except MemoryError:
        module.__dict__.clear()
        server.reply(["failed", {"status": "memory", "exc_type": "MemoryError", "message": "out of memory"}])
        return
    except BaseException as exc:  # noqa: BLE001 - the program's failure is the result
        server.reply(["failed", server.describe_failure(exc)])
        return
    server.reply(["manifest", server.manifest(module.__dict__)])
    server.serve()


class Handles:
    """Objects handed out by number; kept alive for the run so a number always means one object."""

    def __init__(self) -> None:
        self.objects: list = []
        self._numbers: dict[int, int] = {}

    def add(self, value: object) -> int:
        number = self._numbers.get(id(value))
        if number is None:
            if len(self.objects) >= MAX_HANDLES:
                raise WireError(f"more than {MAX_HANDLES} objects handed out")
            number = self._numbers[id(value)] = len(self.objects)
            self.objects.append(value)
        return number

    def get(self, data: list) -> object:
        if len(data) != 2 or type(data[1]) is not int or not 0 <= data[1] < len(self.objects):
            raise WireError("unknown handle")
        return self.objects[data[1]]


class ProgramEncoder(Encoder):
    """Non-plain objects stay here and cross as handles; of classes, only PLAIN_TYPES go by name."""

    def __init__(self, handles: Handles, max_nodes: int = MAX_NODES) -> None:
        super().__init__(max_nodes)
        self.handles = handles

    def other(self, value: object, depth: int) -> object:
        if is_plain_type(value):
            return standard_name(value)
        return ["h", self.handles.add(value), type(value).__name__[:100]]


class ProgramDecoder(Decoder):
    def __init__(self, handles: Handles) -> None:
        self.handles = handles

    def handle(self, data: list) -> object:
        if data[0] != "r":
            raise WireError("only handles handed out here can come back")
        return self.handles.get(data)


class Server:
    """Answers the harness's requests; captures what it uses before the program can replace it."""

    def __init__(self, lines: list[str]) -> None:
        import traceback

        self.lines = lines
        self.handles = Handles()
        self.decoder = ProgramDecoder(self.handles)
        self.reader = FrameReader(REQUESTS_FD)
        self._streams = (sys.stdout, sys.stderr)
        self._extract_tb, self._format_exception_only = traceback.extract_tb, traceback.format_exception_only
        self._ops = {"call": self._call, "getattr": getattr, "setattr": setattr, "delattr": delattr,
                     "getitem": _getitem, "setitem": _setitem, "delitem": _delitem, "len": len, "bool": bool,
                     "str": str, "repr": repr, "iter": iter, "next": next, "contains": _contains,
                     "isinstance": _isinstance, "issubclass": _issubclass, "callable": callable}

    def encode(self, value: object, max_nodes: int = MAX_NODES) -> object:
        return ProgramEncoder(self.handles, max_nodes).encode(value)

    def reply(self, message: list) -> None:
        for stream in self._streams:
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the program may have broken its streams
                pass
        try:
            send(REPLIES_FD, message)
        except (WireError, TypeError, ValueError) as exc:
            send(REPLIES_FD, ["error", f"cannot send the answer: {exc}"[:500]])

    def manifest(self, namespace: dict) -> list:
        """[name, value] for the program's top-level names; big values go as handles, modules as
        the marker ["m"] (the harness imports its own module of that *name*, if it is one)."""
        entries = []
        for name, value in list(namespace.items()):
            if type(name) is not str or not name.isidentifier() or (name.startswith("__") and name.endswith("__")):
                continue
            if type(value) is type(sys):
                entries.append([name, ["m"]])
                continue
            try:
                entries.append([name, self.encode(value, MANIFEST_NODES)])
            except WireError:
                entries.append([name, ["h", self.handles.add(value), type(value).__name__[:100]]])
        return entries

    def serve(self) -> None:
        """Answer until the harness is done (EOF) or gone."""
        while True:
            try:
                message = self.reader.read()
            except (EOFError, OSError, WireError):
                return
            try:
                self.reply(self.answer(message))
            except OSError:  # the harness went away mid-answer (its run is over)
                return

    def answer(self, message: object) -> list:
        if type(message) is not list or not message or message[0] not in self._ops:
            return ["error", "unknown request"]
        op = message[0]
        try:
            if op == "call":
                result, copied = self._call(*message[1:])
            else:
                result, copied = self._ops[op](*(self.decoder.decode(a) for a in message[1:])), []
        except StopIteration as exc:
            if op == "next":
                return ["stop"]
            return ["x", *self.describe(exc)]
        except MemoryError:
            return ["memory"]
        except Exception as exc:  # noqa: BLE001 - the harness rebuilds it
            return ["x", *self.describe(exc)]
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co. inside a call: the run fails
            return ["exit", type(exc).__name__[:100], _message(exc)]
        try:
            return ["v", self.encode(result), copied]
        except MemoryError:
            return ["memory"]
        except (WireError, RecursionError) as exc:
            return ["error", f"cannot send the result: {exc}"[:500]]

    def _call(self, target: list, args: list, kwargs: list) -> tuple[object, list]:
        function = self.decoder.decode(target)
        values = [self.decoder.decode(a) for a in args]
        named = {name: self.decoder.decode(v) for name, v in kwargs}
        result = function(*values, **named)
        # Arguments the callee may change in place come back to the harness's objects.
        copied = []
        for key, data in [*enumerate(args), *kwargs]:
            if type(data) is list and data and data[0] in _MUTABLE_TAGS:
                after = self.encode(values[key] if type(key) is int else named[key])
                if after != data:
                    copied.append([key, after])
        return result, copied

    def describe(self, exc: BaseException) -> list:
        """[type name, message, frames in <program>, errno, args if plain data]: what the harness
        rebuilds an exception from."""
        try:
            return self._describe(exc)
        except Exception:  # noqa: BLE001 - an exception object hostile enough to break this
            return [type(exc).__name__[:100], "<unprintable>", [], None, None]

    def _describe(self, exc: BaseException) -> list:
        frames = [["<program>", f.lineno or 0, self._line(f.lineno)]
                  for f in self._extract_tb(exc.__traceback__) if f.filename == "<program>"][-20:]
        errno = exc.errno if isinstance(exc, OSError) and type(exc.errno) is int else None
        args = exc.args
        if isinstance(exc, OSError) and exc.filename is not None:  # not in .args: (errno, strerror) only
            args = (exc.errno, exc.strerror, exc.filename, None, exc.filename2)
        try:
            args = Encoder(max_nodes=1000).encode(args) if type(args) is tuple else None
        except (TypeError, WireError, RecursionError):
            args = None  # objects of the program's own: the message has to do
        return [type(exc).__name__[:100], _message(exc), frames, errno, args]

    def describe_failure(self, exc: BaseException) -> dict:
        """The program itself failed: a report for the harness; the traceback goes to stderr."""
        import errno

        name, message, frames, code, _ = self.describe(exc)
        if isinstance(exc, SyntaxError) and exc.filename == "<program>":  # its location is not a frame
            frames.append(["<program>", exc.lineno or 0, (exc.text or "").strip()])
        stack = "".join(f'  File "{f}", line {n}\n    {line}\n' for f, n, line in frames)
        try:
            summary = "".join(self._format_exception_only(type(exc), exc))[-2000:]
        except BaseException:  # noqa: BLE001 - a hostile __str__
            summary = f"{name}\n"
        try:
            self._streams[1].write(f"Traceback (most recent call last):\n{stack}{summary}" if stack else summary)
        except BaseException:  # noqa: BLE001
            pass
        status = "exception"
        if not isinstance(exc, Exception):
            status = "exited"  # SystemExit, KeyboardInterrupt: an exit before the tests ran
        elif code == errno.EFBIG:
            status = "file_size"
        return {"status": status, "exc_type": name, "message": message, "traceback": frames}

    def _line(self, lineno: int | None) -> str:
        return self.lines[lineno - 1].strip() if lineno and 0 < lineno <= len(self.lines) else ""


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
        return text[:2000] if type(text) is str else "<unprintable>"
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return "<unprintable>"


def _getitem(target, key):
    return target[key]


def _setitem(target, key, value) -> None:
    target[key] = value


def _delitem(target, key) -> None:
    del target[key]


def _contains(target, item) -> bool:
    return item in target


def _isinstance(value, cls) -> bool:
    return isinstance(value, cls)


def _issubclass(value, cls) -> bool:
    return issubclass(value, cls)
