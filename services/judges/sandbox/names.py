"""Standard-library names that may cross the channel, and resolving them (see ``wire``).

A name is only ever resolved here, in the receiving process, to that process's
own module or object; the sender's object never crosses. The harness accepts from
the program only the classes in ``PLAIN_TYPES`` by name (``remote.HarnessDecoder``).
Runs inside the zygote only (both ends of the channel import it), and, as
``cgpo.services.judges.sandbox.names``, in unit tests.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import importlib
import sys

# Standard-library modules never imported by name on request: side effects at import time.
_NOT_IMPORTED = frozenset({"__main__", "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"})

PLAIN_TYPES = frozenset({
    bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, range,
    collections.OrderedDict, collections.Counter, collections.defaultdict, collections.deque,
    fractions.Fraction, decimal.Decimal, datetime.date, datetime.time, datetime.datetime, datetime.timedelta,
})
"""The only classes a program may name to the harness (as values, defaultdict factories): calling
one runs no code the program chose."""


PLAIN_TYPE_NAMES = {(kind.__module__, kind.__qualname__): kind for kind in PLAIN_TYPES}
"""(module, qualname) -> class, to resolve a name from the program without importing anything."""


def is_plain_type(value: object) -> bool:
    return type(value) is type and value in PLAIN_TYPES


def standard_name(value: object) -> list | None:
    """``["m", name]`` / ``["o", module, qualname]`` when ``value`` *is* that standard-library
    module or class/function (checked by resolving the name), else None."""
    if type(value) is type(sys):
        name = getattr(value, "__name__", None)
        return ["m", name] if type(name) is str and _is_standard(name) else None
    if not callable(value):
        return None
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if type(module) is not str or type(qualname) is not str or not _is_standard(module):
        return None
    try:
        if standard_object(module, qualname) is value:
            return ["o", module, qualname]
    except LookupError:
        pass
    return None


def _is_standard(module: str) -> bool:
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names and top not in _NOT_IMPORTED


def standard_module(name: str):
    """The standard-library module ``name``, imported here (never the sender's object)."""
    if not _is_standard(name) or not all(part.isidentifier() for part in name.split(".")):
        raise LookupError(f"not a standard-library module: {name[:100]!r}")
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or the sandbox refusing it
        raise LookupError(f"cannot import {name!r}: {type(exc).__name__}") from None


def standard_object(module: str, qualname: str):
    """A class or function of a standard-library module, by qualified name (no ``<locals>``)."""
    value = standard_module(module)
    for part in qualname.split("."):
        if not part.isidentifier():
            raise LookupError(f"not a qualified name: {qualname[:100]!r}")
        try:
            value = getattr(value, part)
        except Exception:  # noqa: BLE001 - AttributeError or a lazy module failing
            raise LookupError(f"{module}.{qualname} does not exist") from None
    if not callable(value):
        raise LookupError(f"{module}.{qualname} is not a class or function")
    return value
