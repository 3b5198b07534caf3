"""The harness's side of the channel: requests to the program process, decoded answers, proxies.

Runs inside the zygote only (in the harness process), and, as
``cgpo.services.judges.sandbox.remote``, in unit tests. Everything the program process
sends is untrusted: answers become plain data (``wire``), ``Remote`` proxies whose
``==`` and ``hash`` are identity, or exceptions rebuilt as builtin types; a
program that dies, exits or breaks the protocol makes ``Channel.failure`` sticky
and raises ``ProgramGone``, a ``BaseException`` the tests cannot turn into a pass.
"""

from __future__ import annotations

import builtins

if __package__:
    from .wire import PLAIN_TYPE_NAMES, Decoder, Encoder, FrameReader, WireError, send, standard_name
else:  # a plain sibling module inside the zygote
    from wire import PLAIN_TYPE_NAMES, Decoder, Encoder, FrameReader, WireError, send, standard_name

_FAILED_STATUSES = ("exception", "file_size", "exited", "memory")  # what the program may say of itself
TEXT_MAX = 2000
BUILTIN_NAMES = frozenset(dir(builtins))


class ProgramGone(BaseException):
    """The program process died, exited or broke the protocol: the run fails whatever the tests catch."""


class RemoteError(Exception):
    """An exception of the program's own type (or a builtin one that cannot be rebuilt here)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class Channel:
    """Requests to the program process and decoded answers; ``failure`` is sticky."""

    def __init__(self, out_fd: int, in_fd: int) -> None:
        self.out_fd = out_fd
        self.reader = FrameReader(in_fd)
        self.decoder = HarnessDecoder(self)
        self.failure: dict | None = None
        self.remotes: dict[int, Remote] = {}
        self.ready = False
        """The program process said it entered the sandbox: from then on, how it ends is the program's doing."""

    def first(self) -> list:
        """The program's first message after ["ready"]: ["manifest", entries] or ["failed", report]."""
        if self._receive() != ["ready"]:
            self.fail("crashed", "the program process did not start as expected")
        self.ready = True
        message = self._receive()
        if type(message) is list and len(message) == 2 and message[0] == "manifest" and type(message[1]) is list:
            if all(type(e) is list and len(e) == 2 and type(e[0]) is str and e[0].isidentifier()
                   for e in message[1]):
                return message
        elif type(message) is list and len(message) == 2 and message[0] == "failed":
            report = _program_failure(message[1])
            if report is not None:
                return ["failed", report]
        self.fail("crashed", "the program process sent a malformed first message")

    def decode(self, data: object) -> object:
        try:
            return self.decoder.decode(data)
        except WireError as exc:
            self.fail("crashed", f"the program process sent malformed data: {exc}")
        except MemoryError:
            self.fail("memory", "out of memory receiving the program's answer")

    def ask(self, op: str, *values: object) -> object:
        encoder = HarnessEncoder(self)
        return self._exchange([op, *(encoder.encode(v) for v in values)], op)

    def call(self, target: Remote, args: tuple, kwargs: dict) -> object:
        encoder = HarnessEncoder(self)
        message = ["call", encoder.encode(target), [encoder.encode(a) for a in args],
                   [[k, encoder.encode(v)] for k, v in kwargs.items()]]
        value, copied = self._exchange(message, "call", with_copies=True)
        for entry in copied:
            self._refill(args, kwargs, entry)
        return value

    def fail(self, status: str, message: str, exc_type: str = "ProgramGone"):
        if self.failure is None:
            self.failure = {"status": status, "exc_type": exc_type, "message": message[:TEXT_MAX]}
            if status == "program_died":
                self.failure["entered"] = self.ready
        raise ProgramGone(self.failure["message"])

    def _exchange(self, message: list, op: str, with_copies: bool = False):
        if self.failure is not None:
            raise ProgramGone(self.failure["message"])
        try:
            send(self.out_fd, message)
        except WireError as exc:  # the test's own arguments: not the program's fault
            raise ValueError(f"cannot send the arguments to the program: {exc}") from None
        except OSError:
            self.fail("program_died", "the program process is gone")
        reply = self._receive()
        kind = reply[0] if type(reply) is list and reply and type(reply[0]) is str else None
        if kind == "v" and len(reply) == 3 and type(reply[2]) is list:
            value = self.decode(reply[1])
            return (value, reply[2]) if with_copies else value
        if kind == "x" and len(reply) == 6:
            raise self._rebuild(reply[1:])
        if kind == "stop" and op == "next":
            raise StopIteration
        if kind == "exit" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            self.fail("exited", f"the program raised {reply[1][:100]} inside a call: {reply[2]}", reply[1][:100])
        if kind == "memory":
            self.fail("memory", "out of memory", "MemoryError")
        if kind == "error" and len(reply) == 2 and type(reply[1]) is str:
            self.fail("exception", reply[1], "TransferError")
        self.fail("crashed", f"the program process answered {op!r} with a malformed message")

    def _receive(self) -> object:
        try:
            return self.reader.read()
        except (EOFError, OSError):
            self.fail("program_died", "the program process is gone")
        except WireError as exc:
            self.fail("crashed", f"the program process broke the protocol: {exc}")
        except MemoryError:
            self.fail("memory", "out of memory receiving the program's answer")

    def _rebuild(self, info: list) -> Exception:
        """The program's exception as one of ours: a builtin Exception type of the same name, else RemoteError."""
        name, message, frames, errno, args = info
        if (type(name) is not str or type(message) is not str or type(frames) is not list
                or not (errno is None or type(errno) is int)):
            self.fail("crashed", "the program process described an exception badly")
        args = self.decode(args) if args is not None else None
        cls = getattr(builtins, name, None) if name in BUILTIN_NAMES else None
        exc: Exception
        # StopIteration would end the test's loop quietly (all(map(f, xs)) passing): never rebuilt.
        if isinstance(cls, type) and issubclass(cls, Exception) and cls not in (StopIteration, StopAsyncIteration):
            try:
                exc = cls(*args) if type(args) is tuple else cls(message)
            except Exception:  # noqa: BLE001 - a type whose constructor wants more (UnicodeDecodeError)
                exc = RemoteError(name, message)
            if isinstance(exc, OSError) and errno is not None:
                exc.errno = errno
        else:
            exc = RemoteError(name[:100], message)
        exc.remote_frames = _program_frames(frames)
        return exc

    def _refill(self, args: tuple, kwargs: dict, entry: object) -> None:
        """Copy an in-place change the program made to an argument back into the test's object."""
        key, data = entry if type(entry) is list and len(entry) == 2 else (None, None)
        if type(key) is int and 0 <= key < len(args):
            original = args[key]
        elif type(key) is str and key in kwargs:
            original = kwargs[key]
        else:
            self.fail("crashed", "the program process copied back an argument it was not given")
        changed = self.decode(data)
        if type(original) not in (list, dict, set, bytearray) or type(changed) is not type(original):
            self.fail("crashed", "the program process copied back a different type")
        if type(original) in (list, bytearray):
            original[:] = changed
        else:
            original.clear()
            original.update(changed)


def _program_frames(frames: list) -> list:
    """Traceback frames the program reported, kept only if well formed and in <program>."""
    return [tuple(f) for f in frames[-20:]
            if type(f) is list and len(f) == 3 and f[0] == "<program>" and type(f[1]) is int and type(f[2]) is str]


def _program_failure(report: object) -> dict | None:
    """The program's account of its own failure, if well formed (it can only make the run fail)."""
    if type(report) is not dict or report.get("status") not in _FAILED_STATUSES:
        return None
    exc_type, message, frames = report.get("exc_type"), report.get("message", ""), report.get("traceback", [])
    if type(exc_type) is not str or type(message) is not str or type(frames) is not list:
        return None
    return {"status": report["status"], "exc_type": exc_type[:100], "message": message[:TEXT_MAX],
            "traceback": _program_frames(frames)}


class HarnessEncoder(Encoder):
    """What the tests pass to the program: plain data, standard-library names, the program's own objects."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def other(self, value: object, depth: int) -> object:
        if type(value) is Remote:
            return ["r", object.__getattribute__(value, "_Remote__number")]
        named = standard_name(value)
        if named is not None:
            return named
        raise TypeError(f"cannot pass a {type(value).__name__} object to the program: only plain data, "
                        "standard-library classes and functions, and objects the program returned can cross")


class HarnessDecoder(Decoder):
    """The program's values: plain data, PLAIN_TYPES by name, and Remote proxies for the rest."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def standard(self, module: str, qualname: str) -> object:
        # Looked up, never imported: builtins.exec (or any callable but a plain-data type) would run
        # the program's strings right here.
        value = PLAIN_TYPE_NAMES.get((module, qualname))
        if value is None:
            raise WireError(f"{module[:100]}.{qualname[:100]} is not a plain-data type")
        return value

    def module(self, name: str) -> object:
        raise WireError("modules do not cross from the program")

    def handle(self, data: list) -> Remote:
        if data[0] != "h" or len(data) != 3 or type(data[1]) is not int or type(data[2]) is not str:
            raise WireError("malformed handle")
        remote = self.channel.remotes.get(data[1])
        if remote is None:
            remote = self.channel.remotes[data[1]] = Remote(self.channel, data[1], data[2][:100])
        return remote


# ============================================================== proxies


class Remote:
    """An object that lives in the program process. Equality and hashing are identity."""

    __slots__ = ("__channel", "__number", "__type")

    def __init__(self, channel: Channel, number: int, type_name: str) -> None:
        object.__setattr__(self, "_Remote__channel", channel)
        object.__setattr__(self, "_Remote__number", number)
        object.__setattr__(self, "_Remote__type", type_name)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__

    def __call__(self, *args, **kwargs):
        return self.__channel.call(self, args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__") and name not in ("__name__", "__qualname__"):
            raise AttributeError(name)  # protocols (__deepcopy__, __fspath__ ...) are not delegated
        return self.__channel.ask("getattr", self, name)

    def __setattr__(self, name: str, value: object) -> None:
        self.__channel.ask("setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        self.__channel.ask("delattr", self, name)

    def __getitem__(self, key):
        return self.__channel.ask("getitem", self, key)

    def __setitem__(self, key, value) -> None:
        self.__channel.ask("setitem", self, key, value)

    def __delitem__(self, key) -> None:
        self.__channel.ask("delitem", self, key)

    def __len__(self) -> int:
        return self.__checked("len", int, self)

    def __bool__(self) -> bool:
        return self.__checked("bool", bool, self)

    def __contains__(self, item) -> bool:
        return self.__checked("contains", bool, self, item)

    def __str__(self) -> str:
        return self.__checked("str", str, self)

    def __repr__(self) -> str:
        return self.__checked("repr", str, self)

    def __iter__(self):
        return self.__checked("iter", Remote, self)

    def __next__(self):
        return self.__channel.ask("next", self)

    def __instancecheck__(self, value) -> bool:
        try:
            return self.__checked("isinstance", bool, value, self)
        except TypeError:  # a value of the tests' own that cannot be sent is no instance of the program's
            return False

    def __subclasscheck__(self, cls) -> bool:
        return self.__checked("issubclass", bool, cls, self)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce_ex__(self, protocol):
        raise TypeError(f"a remote {self.__type} object cannot be pickled")

    def __checked(self, op: str, kind: type, *values):
        value = self.__channel.ask(op, *values)
        if type(value) is not kind or (kind is int and value < 0):
            self.__channel.fail("crashed", f"the program process answered {op!r} with a {type(value).__name__}")
        return value
