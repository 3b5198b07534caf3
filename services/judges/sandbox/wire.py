"""Values crossing between the program process and the test harness: tagged JSON, never pickle.

Runs inside the zygote only (both ends of the channel import it), and, as
``cgpo.services.judges.sandbox.wire``, in unit tests. A frame is a 4-byte big-endian
length and that many bytes of ASCII JSON (``ensure_ascii``: lone surrogates
travel as escapes and come back unchanged). A value is a JSON scalar — null,
true/false, an int of fewer than 4000 digits, a float (NaN and infinities
included), a string — or a list whose first item is a tag:

    l t s fs       list, tuple, set, frozenset            [tag, item, ...]
    d od cn        dict, OrderedDict, Counter             [tag, key, value, ...]
    dd             defaultdict                            ["dd", factory, key, value, ...]
    dq             deque                                  ["dq", maxlen, item, ...]
    nt             namedtuple (rebuilt by the receiver)   ["nt", name, [field, ...], item, ...]
    dk dv di       dict keys / values / items views       [tag, item, ...] (items: key, value, ...)
    i c b ba       big int (hex), complex, bytes, bytearray (base64)
    fr dc rg       Fraction, Decimal, range
    dt td          date / time / datetime (naive, ISO), timedelta
    o              a class or function of the standard library, by name: from the program only
                   one of PLAIN_TYPES (``int``, ``Counter``...), the harness may send any
    m              a standard-library module, by name (harness -> program only)
    h r            an opaque object the program keeps: a handle it sends / one sent back

Only exact types are plain data (``type(x) is str``, never a subclass): anything
else becomes whatever the encoder's ``other`` makes of it — a handle in the
program, a ``TypeError`` in the harness. Decoding builds only the types above, so
the receiver never runs code that the sender chose; in particular the harness
never turns a name the program sends into a callable other than a plain-data type
(a claim that ``f`` is ``builtins.exec`` would run the program's strings in the
trusted process). Depth and size are bounded; violations raise ``WireError``.
"""

from __future__ import annotations

import base64
import collections
import datetime
import decimal
import fractions
import functools
import json
import keyword
import os
import struct

if __package__:
    from .names import PLAIN_TYPE_NAMES, PLAIN_TYPES, is_plain_type, standard_module, standard_name, standard_object
else:  # a plain sibling module inside the zygote
    from names import PLAIN_TYPE_NAMES, PLAIN_TYPES, is_plain_type, standard_module, standard_name, standard_object

__all__ = ["MAX_DEPTH", "MAX_FRAME_BYTES", "MAX_NODES", "PLAIN_TYPE_NAMES", "PLAIN_TYPES", "Decoder", "Encoder",
           "FrameReader", "WireError", "is_plain_type", "send", "standard_module", "standard_name", "standard_object"]

MAX_FRAME_BYTES = 16 << 20
MAX_DEPTH = 100
"""Containers nested deeper than this (or cyclic ones) cannot cross."""
MAX_NODES = 2_000_000
"""Scalars and containers in one message."""
_JSON_INT_LIMIT = 10**4000  # below CPython's 4300-digit int<->str limit; larger ints go as hex
_SCALARS = frozenset({str, float, bool, type(None)})
_JSON_SCALARS = _SCALARS | {int}  # what json.loads makes of JSON's scalars
_HEADER = struct.Struct(">I")
# Bound once: a program that patches json or os in its process must not change how it is framed.
_dumps, _loads, _read, _write = json.dumps, json.loads, os.read, os.write


class WireError(Exception):
    """Malformed, oversized, too deeply nested or unencodable data on the channel."""


# ============================================================== frames


def send(fd: int, message: object) -> None:
    data = _dumps(message, separators=(",", ":")).encode("ascii")
    if len(data) > MAX_FRAME_BYTES:
        raise WireError(f"message of {len(data)} bytes (limit {MAX_FRAME_BYTES})")
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[_write(fd, view):]


class FrameReader:
    """Reads frames from one descriptor; ``EOFError`` when the writer is gone before a frame starts."""

    def __init__(self, fd: int, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.fd, self.max_bytes = fd, max_bytes

    def read(self) -> object:
        header = self._read_exact(_HEADER.size, allow_eof=True)
        (size,) = _HEADER.unpack(header)
        if size > self.max_bytes:
            raise WireError(f"frame of {size} bytes (limit {self.max_bytes})")
        try:
            return _loads(self._read_exact(size, allow_eof=False))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise WireError(f"not JSON: {exc}") from None

    def _read_exact(self, n: int, allow_eof: bool) -> bytes:
        chunks, left = [], n
        while left:
            chunk = _read(self.fd, min(left, 1 << 20))
            if not chunk:
                if allow_eof and left == n:
                    raise EOFError("channel closed")
                raise WireError("channel closed inside a frame")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


# ============================================================== encoding


class Encoder:
    """Plain data -> tagged JSON. Subclasses decide what every other object becomes (``other``)."""

    def __init__(self, max_nodes: int = MAX_NODES) -> None:
        self.max_nodes = max_nodes
        self.nodes = 0

    def encode(self, value: object, depth: int = 0) -> object:
        kind = type(value)
        if kind is str or kind is float or kind is bool or value is None:
            return value
        if kind is int:
            return value if -_JSON_INT_LIMIT < value < _JSON_INT_LIMIT else ["i", hex(value)]
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise WireError(f"more than {self.max_nodes} values")
        if depth >= MAX_DEPTH:
            raise WireError(f"nested deeper than {MAX_DEPTH} levels (or cyclic)")
        method = _ENCODERS.get(kind)
        if method is not None:
            return method(self, value, depth + 1)
        if isinstance(value, tuple) and _namedtuple_fields(value) is not None:
            return self._namedtuple(value, depth + 1)
        return self.other(value, depth + 1)

    def other(self, value: object, depth: int) -> object:
        named = standard_name(value)
        if named is None:
            raise TypeError(f"a {type(value).__name__!s} object cannot be sent")
        return named

    def _items(self, tag: str, values, depth: int) -> list:
        values = list(values)
        self.nodes += len(values)
        kinds = set(map(type, values))  # fast path (C loops) for the common list of plain scalars
        if kinds <= _SCALARS or kinds == {int} and -_JSON_INT_LIMIT < min(values) and max(values) < _JSON_INT_LIMIT:
            if self.nodes > self.max_nodes:
                raise WireError(f"more than {self.max_nodes} values")
            return [tag, *values]
        return [tag, *(self.encode(v, depth) for v in values)]

    def _pairs(self, tag: str, mapping, depth: int, *head) -> list:
        out = [tag, *head]
        for key, value in dict.items(mapping):
            out.append(self.encode(key, depth))
            out.append(self.encode(value, depth))
        return out

    def _namedtuple(self, value: tuple, depth: int) -> list:
        return ["nt", type(value).__name__, list(_namedtuple_fields(value)),
                *(self.encode(v, depth) for v in tuple.__iter__(value))]


def _namedtuple_fields(value: tuple) -> tuple | None:
    fields = getattr(type(value), "_fields", None)
    if type(fields) is tuple and len(fields) == tuple.__len__(value) and all(type(f) is str for f in fields):
        return fields
    return None


def _encode_bytes(tag: str):
    return lambda self, value, depth: [tag, base64.b64encode(value).decode("ascii")]


_ENCODERS = {
    list: lambda self, v, d: self._items("l", list.__iter__(v), d),
    tuple: lambda self, v, d: self._items("t", tuple.__iter__(v), d),
    set: lambda self, v, d: self._items("s", set.__iter__(v), d),
    frozenset: lambda self, v, d: self._items("fs", frozenset.__iter__(v), d),
    dict: lambda self, v, d: self._pairs("d", v, d),
    collections.OrderedDict: lambda self, v, d: self._pairs("od", v, d),
    collections.Counter: lambda self, v, d: self._pairs("cn", v, d),
    collections.defaultdict: lambda self, v, d: self._pairs("dd", v, d, _factory(v.default_factory)),
    collections.deque: lambda self, v, d: ["dq", v.maxlen, *(self.encode(x, d) for x in v)],
    type({}.keys()): lambda self, v, d: self._items("dk", v, d),
    type({}.values()): lambda self, v, d: self._items("dv", v, d),
    type({}.items()): lambda self, v, d: ["di", *(self.encode(x, d) for pair in v for x in pair)],
    complex: lambda self, v, d: ["c", v.real, v.imag],
    bytes: _encode_bytes("b"),
    bytearray: _encode_bytes("ba"),
    fractions.Fraction: lambda self, v, d: ["fr", self.encode(v.numerator, d), self.encode(v.denominator, d)],
    decimal.Decimal: lambda self, v, d: ["dc", str(v)],
    range: lambda self, v, d: ["rg", self.encode(v.start, d), self.encode(v.stop, d), self.encode(v.step, d)],
    datetime.timedelta: lambda self, v, d: ["td", v.days, v.seconds, v.microseconds],
}


def _encode_datetime(kind: str):
    def encode(self, value, depth):
        if getattr(value, "tzinfo", None) is not None:
            return self.other(value, depth)  # time zones are objects: no plain form
        return ["dt", kind, value.isoformat()]

    return encode


for _kind in (datetime.date, datetime.time, datetime.datetime):
    _ENCODERS[_kind] = _encode_datetime(_kind.__name__)


def _factory(factory) -> object:
    """A defaultdict's factory travels only if it is one of PLAIN_TYPES; anything else is dropped."""
    return standard_name(factory) if is_plain_type(factory) else None


# ============================================================== decoding


class Decoder:
    """Tagged JSON -> values of trusted types only. Subclasses resolve handles (``handle``)."""

    def decode(self, data: object, depth: int = 0) -> object:
        kind = type(data)
        if kind is str or kind is int or kind is float or kind is bool or data is None:
            return data
        if kind is not list or not data or type(data[0]) is not str:
            raise WireError(f"not a value: {_preview(data)}")
        if depth >= MAX_DEPTH:
            raise WireError(f"nested deeper than {MAX_DEPTH} levels")
        method = _DECODERS.get(data[0])
        if method is None:
            if data[0] in ("h", "r"):
                return self.handle(data)
            raise WireError(f"unknown tag {_preview(data[0])}")
        try:
            return method(self, data, depth + 1)
        except WireError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise WireError(f"bad {data[0]!r} value: {type(exc).__name__}: {exc}") from None

    def handle(self, data: list) -> object:
        raise WireError("handles are not accepted here")

    def standard(self, module: str, qualname: str) -> object:
        """What an ``o`` value names; this default (the program's side) resolves any class or function."""
        return standard_object(module, qualname)

    def module(self, name: str) -> object:
        return standard_module(name)

    def items(self, data: list, depth: int, start: int = 1) -> list:
        values = data[start:]
        if set(map(type, values)) <= _JSON_SCALARS:  # fast path: nothing tagged inside
            return values
        return [self.decode(v, depth) for v in values]

    def pairs(self, data: list, depth: int, mapping: dict, start: int = 1) -> dict:
        if (len(data) - start) % 2:
            raise WireError("odd number of items in a mapping")
        values = self.items(data, depth, start)
        for i in range(0, len(values), 2):
            mapping[values[i]] = values[i + 1]  # TypeError for an unhashable key
        return mapping


def _exact_int(value: object) -> int:
    if type(value) is not int:
        raise TypeError("expected an int")
    return value


def _big_int(self, data, depth) -> int:
    if len(data) != 2 or type(data[1]) is not str or not data[1].lstrip("-").startswith("0x"):
        raise ValueError("expected a hex string")
    return int(data[1], 16)


def _decode_bytes(kind: type):
    def decode(self, data, depth):
        if len(data) != 2 or type(data[1]) is not str:
            raise TypeError("expected base64 text")
        return kind(base64.b64decode(data[1], validate=True))

    return decode


def _complex(self, data, depth) -> complex:
    if len(data) != 3 or not all(type(x) in (float, int) for x in data[1:]):
        raise TypeError("expected two numbers")
    return complex(data[1], data[2])


def _defaultdict(self, data, depth) -> collections.defaultdict:
    if len(data) < 2 or not (data[1] is None or type(data[1]) is list and data[1][:1] == ["o"]):
        raise TypeError("a defaultdict factory is null or a standard-library name")
    factory = None if data[1] is None else self.decode(data[1], depth)
    return self.pairs(data, depth, collections.defaultdict(factory), start=2)


def _deque(self, data, depth) -> collections.deque:
    maxlen = data[1] if len(data) > 1 else None
    if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
        raise TypeError("bad deque maxlen")
    return collections.deque(self.items(data, depth, start=2), maxlen)


def _namedtuple(self, data, depth) -> tuple:
    if len(data) < 3 or type(data[1]) is not str or type(data[2]) is not list:
        raise TypeError("expected a name and fields")
    name, fields, values = data[1], tuple(data[2]), self.items(data, depth, start=3)
    if len(fields) != len(values):
        raise ValueError("fields and values differ in number")
    if _valid_fields(name, fields):
        return _namedtuple_class(name, fields)(*values)
    return tuple(values)


def _valid_fields(name: str, fields: tuple) -> bool:
    names = (name, *fields)
    return (len(fields) <= 255 and len(set(fields)) == len(fields)
            and all(type(n) is str and n.isidentifier() and not keyword.iskeyword(n) for n in names)
            and not any(f.startswith("_") for f in fields))


@functools.lru_cache(maxsize=256)
def _namedtuple_class(name: str, fields: tuple) -> type:
    return collections.namedtuple(name, fields)


def _fraction(self, data, depth) -> fractions.Fraction:
    if len(data) != 3:
        raise TypeError("expected numerator and denominator")
    return fractions.Fraction(_exact_int(self.decode(data[1], depth)), _exact_int(self.decode(data[2], depth)))


def _decimal(self, data, depth) -> decimal.Decimal:
    if len(data) != 2 or type(data[1]) is not str or len(data[1]) > 10_000:
        raise TypeError("expected decimal text")
    return decimal.Decimal(data[1])


def _range(self, data, depth) -> range:
    if len(data) != 4:
        raise TypeError("expected start, stop, step")
    return range(*(_exact_int(self.decode(x, depth)) for x in data[1:]))


_DATETIME_KINDS = {"date": datetime.date, "time": datetime.time, "datetime": datetime.datetime}


def _datetime(self, data, depth):
    if len(data) != 3 or data[1] not in _DATETIME_KINDS or type(data[2]) is not str or len(data[2]) > 64:
        raise TypeError("expected a kind and ISO text")
    value = _DATETIME_KINDS[data[1]].fromisoformat(data[2])
    if type(value) is not _DATETIME_KINDS[data[1]] or getattr(value, "tzinfo", None) is not None:
        raise ValueError("not a naive value of that kind")
    return value


def _timedelta(self, data, depth) -> datetime.timedelta:
    if len(data) != 4:
        raise TypeError("expected days, seconds, microseconds")
    days, seconds, micros = (_exact_int(x) for x in data[1:])
    return datetime.timedelta(days=days, seconds=seconds, microseconds=micros)


def _module(self, data, depth):
    if len(data) != 2 or type(data[1]) is not str:
        raise TypeError("expected a module name")
    return self.module(data[1])


def _standard_object(self, data, depth):
    if len(data) != 3 or type(data[1]) is not str or type(data[2]) is not str:
        raise TypeError("expected a module and a qualified name")
    return self.standard(data[1], data[2])


def _keys(self, data, depth):
    return dict.fromkeys(self.items(data, depth)).keys()


def _values(self, data, depth):
    return dict(enumerate(self.items(data, depth))).values()


def _dict_items(self, data, depth):
    return self.pairs(data, depth, {}).items()


_DECODERS = {
    "l": lambda self, data, depth: self.items(data, depth),
    "t": lambda self, data, depth: tuple(self.items(data, depth)),
    "s": lambda self, data, depth: set(self.items(data, depth)),
    "fs": lambda self, data, depth: frozenset(self.items(data, depth)),
    "d": lambda self, data, depth: self.pairs(data, depth, {}),
    "od": lambda self, data, depth: self.pairs(data, depth, collections.OrderedDict()),
    "cn": lambda self, data, depth: self.pairs(data, depth, collections.Counter()),
    "dd": _defaultdict,
    "dq": _deque,
    "nt": _namedtuple,
    "dk": _keys,
    "dv": _values,
    "di": _dict_items,
    "i": _big_int,
    "c": _complex,
    "b": _decode_bytes(bytes),
    "ba": _decode_bytes(bytearray),
    "fr": _fraction,
    "dc": _decimal,
    "rg": _range,
    "dt": _datetime,
    "td": _timedelta,
    "m": _module,
    "o": _standard_object,
}


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
