"""The values between the program process and the test harness (``sandbox/wire.py``), in-process.

The harness trusts nothing the program sends: these tests feed the decoder what
a hostile program could put on the channel and check that only exact trusted
types come out, bounded in size and depth, or a ``WireError``.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import json
import math
import os
import struct

import pytest

from cgpo.services.judges.sandbox.wire import (
    MAX_DEPTH,
    Decoder,
    Encoder,
    FrameReader,
    WireError,
    send,
    standard_name,
)

P = collections.namedtuple("P", "x y")
VALUES = [
    None, True, False, 0, -7, 2**64, -(10**5000), 1.5, -0.0, float("inf"), "", "héllo", "a\ud800b", 1 + 2j,
    b"\x00\xff", bytearray(b"ab"), [1, [2, [3]]], (1, "a"), {1, 2}, frozenset({3}), {"a": [1], 2: (3,)},
    collections.OrderedDict(b=1, a=2), collections.Counter("aab"), collections.deque([1, 2], maxlen=5),
    P(1, 2), fractions.Fraction(1, 3), decimal.Decimal("1.10"), decimal.Decimal("NaN"), range(1, 10, 3),
    datetime.date(2024, 2, 29), datetime.datetime(2024, 1, 1, 12, 30, 1, 5), datetime.time(23, 59),
    datetime.timedelta(days=-1, seconds=5), {}.keys(), {"k": 1}.items(),
    [1, "a", 2.5, None, True],
]


def _roundtrip(value):
    return Decoder().decode(json.loads(json.dumps(Encoder().encode(value))))


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_plain_values_round_trip_with_their_exact_type(value):
    back = _roundtrip(value)
    assert type(back) is type(value) or isinstance(value, tuple) and type(value).__name__ == "P"
    if isinstance(value, type({}.keys()) | type({}.items())):
        assert list(back) == list(value)
    elif isinstance(value, decimal.Decimal) and value.is_nan():
        assert back.is_nan()
    else:
        assert back == value and (type(value) is int or repr(back) == repr(value))


def test_nan_namedtuple_and_defaultdict_keep_their_meaning():
    assert math.isnan(_roundtrip(float("nan")))
    point = _roundtrip(P(1, 2))
    assert point == (1, 2) and point.y == 2 and point._fields == ("x", "y")
    counts = _roundtrip(collections.defaultdict(list, a=[1]))
    assert type(counts) is collections.defaultdict and counts["new"] == [] and counts["a"] == [1]
    assert _roundtrip(collections.defaultdict(lambda: 0)).default_factory is None  # only stdlib factories cross


class _Recorder(Encoder):
    def other(self, value, depth):
        return ["h", id(value) % 1000, type(value).__name__]


@pytest.mark.parametrize("value", [
    type("S", (str,), {})("x"), type("I", (int,), {})(1), type("L", (list,), {})(), type("D", (dict,), {})(),
    type("T", (tuple,), {"_fields": 3})(), type("F", (float,), {})(1.0), object(),
])
def test_subclasses_of_plain_types_are_not_plain(value):
    """Only ``type(x) is str`` etc. is data; a subclass could override __eq__, so it stays opaque."""
    assert _Recorder().encode(value)[0] == "h"
    with pytest.raises(TypeError):
        Encoder().encode(value)


def test_standard_names_are_checked_by_resolving_them():
    assert standard_name(math.sqrt) == ["o", "math", "sqrt"]
    assert standard_name(collections.Counter) == ["o", "collections", "Counter"]
    assert standard_name(math) == ["m", "math"]

    def fake(x):
        return x
    fake.__module__, fake.__qualname__ = "math", "sqrt"
    assert standard_name(fake) is None  # claims to be math.sqrt, is not
    assert standard_name(lambda: 0) is None


@pytest.mark.parametrize("data", [
    {"a": 1},  # JSON objects are not values
    [],
    ["nope", 1],
    ["l", {"x": 1}],
    ["d", 1],  # odd pairs
    ["d", ["l", 1], 2],  # unhashable key
    ["s", ["l"]],
    ["i", "123"],  # not hex
    ["c", "1", 2],
    ["b", "not base64!"],
    ["fr", 1, 0],
    ["fr", 1.5, 2],
    ["dc", 5],
    ["rg", 0, 10, 0],
    ["dt", "datetime", "2024-01-01T00:00:00+02:00"],  # aware: time zones do not cross
    ["dt", "date", "yesterday"],
    ["td", 1, 2],
    ["dd", ["h", 1, "f"], "a", 1],  # a factory that is not a standard-library name
    ["dq", -1],
    ["nt", "P", "xy", 1, 2],
    ["nt", "P", ["x"], 1, 2],
    ["m", "antigravity"],  # opens a browser on import
    ["m", "numpy"],
    ["m", "os;rm"],
    ["o", "os", "environ"],  # not a class or function
    ["o", "math", "sqrt.<locals>"],
    ["o", "__main__", "f"],
    ["h", 1, "x"],  # handles only where a subclass accepts them
    ["r", 1],
])
def test_hostile_data_is_refused(data):
    with pytest.raises(WireError):
        Decoder().decode(data)


def test_bad_namedtuple_fields_fall_back_to_a_plain_tuple():
    for name, fields in [("P", ["_x", "y"]), ("P", ["x", "x"]), ("P", ["class", "y"]), ("1P", ["x", "y"])]:
        value = Decoder().decode(["nt", name, fields, 1, 2])
        assert type(value) is tuple and value == (1, 2)


def test_depth_and_size_are_bounded():
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(WireError, match="deeper"):
        Encoder().encode(deep)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(WireError):
        Encoder().encode(cyclic)
    nested = ["l"]
    for _ in range(MAX_DEPTH + 5):
        nested = ["l", nested]
    with pytest.raises(WireError, match="deeper"):
        Decoder().decode(nested)
    with pytest.raises(WireError, match="values"):
        Encoder(max_nodes=100).encode([[i] for i in range(200)])
    with pytest.raises(WireError, match="values"):
        Encoder(max_nodes=100).encode(list(range(200)))


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_frames_are_bounded_and_checked():
    r, w = os.pipe()
    send(w, ["v", "a\ud800", [1, 2.5]])
    os.close(w)
    reader = FrameReader(r)
    assert reader.read() == ["v", "a\ud800", [1, 2.5]]
    with pytest.raises(EOFError):
        reader.read()
    os.close(r)
    cases = [struct.pack(">I", 1 << 30), struct.pack(">I", 10) + b"[1,", struct.pack(">I", 3) + b"{x}",
             struct.pack(">I", 2) + b"\xff\xfe", struct.pack(">I", 20000) + b"[" * 10000 + b"]" * 10000]
    for data in cases:
        fd = _pipe_with(data)
        with pytest.raises(WireError):
            FrameReader(fd, max_bytes=1 << 20).read()
        os.close(fd)
    with pytest.raises(WireError, match="bytes"):
        send(w, "x" * (17 << 20))


def test_the_harness_takes_only_plain_data_types_by_name():
    """A name from the program is never turned into a callable that could run its strings here."""
    from cgpo.services.judges.sandbox.remote import HarnessDecoder

    decoder = HarnessDecoder(channel=None)
    assert decoder.decode(["o", "builtins", "int"]) is int
    assert decoder.decode(["o", "collections", "Counter"]) is collections.Counter
    assert decoder.decode(["dd", ["o", "builtins", "list"], "a", ["l"]])["b"] == []
    for data in (["o", "builtins", "exec"], ["o", "builtins", "eval"], ["o", "math", "sqrt"], ["o", "os", "system"],
                 ["o", "timeit", "timeit"], ["m", "math"], ["m", "os"], ["dd", ["o", "builtins", "exec"]]):
        with pytest.raises(WireError):
            decoder.decode(data)


def test_the_program_sends_everything_but_plain_types_as_handles():
    from cgpo.services.judges.sandbox.program import Handles, ProgramEncoder

    encoder = ProgramEncoder(Handles())
    assert encoder.encode(int) == ["o", "builtins", "int"]
    assert encoder.encode([math.sqrt, math, exec])[1:] == [["h", 0, "builtin_function_or_method"],
                                                           ["h", 1, "module"], ["h", 2, "builtin_function_or_method"]]
    assert encoder.encode(math.sqrt) == ["h", 0, "builtin_function_or_method"]  # one object, one handle
