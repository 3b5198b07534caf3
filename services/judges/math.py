"""The ``math`` judge: the response's final answer equals ``metadata.answer`` (docs/method.md §2).

Extraction. Extractors are tried in the order of ``formats`` (default: all
four, in this order); the first that finds an answer wins. A sample's metadata
``answer_format`` (one of them) accepts that format alone for the sample:

* ``final_answer`` — the last "The final answer is X" (also "Final answer: X"),
  as in the CGPO paper; X runs to the end of that sentence (a ``.`` outside
  ``$...$`` and braces followed by a space, or the end of the line). Markdown
  bold, ``$...$``/``\\(...\\)`` and a ``\\boxed{}`` around X are removed.
* ``boxed`` — the content of the last ``\\boxed{...}`` (nested braces allowed).
* ``gsm8k`` — GSM8K's style: the rest of the last line that starts with ``####``
  (``#### 72``).
* ``pattern`` — the last match of a regex (metadata ``answer_pattern``, else the
  constructor's): group ``answer`` if named, else group 1, else the match.

A right answer in a format that is not accepted is a violation (``fail``).

Comparison. The fast path decides when both answers are plain numbers (exact
``Fraction`` arithmetic, never floats):

* ``1,234`` = ``1234`` (thousands commas in groups of three; ``1,23`` is not a number),
* currency signs are dropped: ``$5`` = ``\\$5`` = ``5``; ``-$3`` = ``-3``,
* ``50%`` = ``50`` (GSM8K writes percentages as the number of percent),
* trailing units are dropped: ``42 apples``, ``5\\text{ cm}``, ``90^\\circ``,
* ``0.5`` = ``1/2`` = ``\\frac{1}{2}`` = ``\\dfrac12``; ``5.0`` = ``5``; ``-3``, ``+3``.

Different numbers fail, except a decimal against a fraction with no finite
decimal expansion (``0.333`` vs ``1/3``): rounding conventions decide that, so
it goes to math-verify like every non-numeric answer (sets, intervals,
expressions, ``\\sqrt{}``...).

Where it runs. Nothing that reads the response runs in the serving process:
each item goes through a ``WorkerPool`` in two steps, each under a hard kill —
metadata, extraction and exact arithmetic (``rule_timeout_s``), then
math-verify for the items the fast path cannot decide (``timeout_s``; its own
SIGALRM timeouts are disabled there). Extraction and number parsing are linear
in the response (no regex here can backtrack over a run of whitespace, and
braces are matched in one pass), so the hard kill is a backstop, not the rule.
``answer_pattern`` regexes (dataset or operator configuration) run under the
same limit.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

from cgpo.services.common.schemas import Verdict
from cgpo.services.judges.base import Judge, Sample, errored, failed, passed
from cgpo.services.judges.pool import PoolError, Result, WorkerPool

FORMATS = ("final_answer", "boxed", "gsm8k", "pattern")

# ---------------------------------------------------------------- extraction

_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"^[ \t]*####[ \t]*([^\n]*)$", re.MULTILINE)
_BRACE = re.compile(r"[{}]")
_SENTENCE_MARK = re.compile(r"[\n${}.]")  # the characters that can end or nest a final-answer sentence
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("*", "*"), ("__", "__"))
# What str.strip() removes: every str.isspace() character lies at or below U+3000 (a test checks all of Unicode).
_WHITESPACE = "".join(filter(str.isspace, map(chr, range(0x3001))))


def extract_final_answer(text: str) -> str | None:
    """X from the last "The final answer is X" sentence, cleaned; None if absent."""
    text = text.replace("**", "")  # "**Final answer:** 3" reads as "Final answer: 3"
    last = None
    for match in _FINAL_ANSWER.finditer(text):
        last = match
    if last is None:
        return None
    return clean_answer(_sentence(text, last.end()))


def extract_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}``; None if there is none."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    span = _last_closed(text, starts)
    return clean_answer(text[span[0] : span[1]]) if span is not None else None


def extract_gsm8k(text: str) -> str | None:
    """The rest of the last line that starts with ``####`` (GSM8K's answers), cleaned; None if absent."""
    last = None
    for match in _HASHES.finditer(text):
        last = match
    if last is None or not last.group(1).strip():
        return None
    return clean_answer(last.group(1))


def extract_pattern(text: str, pattern: re.Pattern[str]) -> str | None:
    """The last match of ``pattern``: its group ``answer``, else group 1, else the match."""
    last = None
    for match in pattern.finditer(text):
        last = match
    if last is None:
        return None
    if "answer" in pattern.groupindex:
        value = last.group("answer")
    else:
        value = last.group(1) if pattern.groups else last.group(0)
    return clean_answer(value) if value is not None else None


def clean_answer(answer: str) -> str | None:
    """Strip markdown, math delimiters, a whole ``\\boxed{}`` and a final period.

    Repeats until nothing changes. Each round strips whitespace and final periods
    (all of them at once: one round per ". " of ". . . ." would be quadratic),
    then peels one pair of delimiters (a kind at most once: its inner part may not
    contain its left delimiter, and rounds only shorten the answer) or takes the
    last box (whose content holds no box), so there are at most ~10 rounds.
    """
    while True:
        before = answer
        answer = answer.rstrip(_WHITESPACE + ".").lstrip()  # the fixed point of .strip().rstrip(".").strip()
        for left, right in _DELIMITERS:
            if answer.startswith(left) and answer.endswith(right):
                inner = answer[len(left) : -len(right)]
                if inner and left not in inner:
                    answer = inner  # "$1$ and $2$" keeps its dollars: the inner part has one
                    break
        if _BOXED.search(answer):
            answer = extract_boxed(answer) or ""
        if answer == before:
            return answer or None


def _sentence(text: str, start: int) -> str:
    """From ``start`` to the end of the sentence: a '.' outside math and braces, or a newline."""
    in_math = False
    depth = 0
    for mark in _SENTENCE_MARK.finditer(text, start):
        i = mark.start()
        c = text[i]
        if c == "\n":
            if not in_math:
                return text[start:i]
        elif c == "$":
            if i == 0 or text[i - 1] != "\\":
                in_math = not in_math
        elif c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif not in_math and depth == 0 and (i + 1 == len(text) or text[i + 1].isspace()):
            return text[start:i]
    return text[start:]


def _last_closed(text: str, starts: list[int]) -> tuple[int, int] | None:
    """(start, end) of the content of the last box whose brace is closed; None if none is.

    ``starts`` are the boxes' content starts (just past their '{'), in order. One
    pass over the braces from the first box: a '}' closes the innermost open '{'
    (a '}' with none open is ignored), and a box closes when the depth falls back
    to what it was before its '{'.
    """
    best: tuple[int, int] | None = None
    depth = 0
    open_boxes: list[tuple[int, int]] = []  # (content start, depth before its '{')
    box = 0
    for brace in _BRACE.finditer(text, starts[0] - 1):
        i = brace.start()
        if text[i] == "{":
            if box < len(starts) and i == starts[box] - 1:
                open_boxes.append((starts[box], depth))
                box += 1
            depth += 1
        elif depth:
            depth -= 1
            if open_boxes and open_boxes[-1][1] == depth:
                start = open_boxes.pop()[0]
                if best is None or start > best[0]:
                    best = (start, i)
    return best


# ---------------------------------------------------------------- numbers

_SPACING = re.compile(r"\\[,!;:]|\\left|\\right")  # "1\\,000" and "10,\\!000" are 1000
# A plain number: [sign] [currency] [sign] number [%] [units...]. Every quantifier next to
# whitespace is possessive (*+, ++, ?+), which changes no match here -- what follows each one
# cannot start with what it gives up -- but leaves one way to split a run of spaces instead of
# a polynomial number of them ("-" + 110 spaces + "!" took 10 s with plain \s*). Trailing spaces
# are a number only without a % or unit after them, as in the plain-quantifier pattern.
_NUMERIC = re.compile(
    r"""
    (?P<sign>[-+\u2212]?+)\s*+
    (?:\\?\$|\\text\{\\\$\}|€|£|¥)?+\s*+                      # currency
    (?P<sign2>[-+\u2212]?+)\s*+
    (?:
        (?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d*))?   # 1,234.5  12  .5  5.
      | (?P<p>\d++)\s*+/\s*+(?P<q>\d++)                        # 3/4
      | \\[dt]?frac(?:\{\s*+(?P<fp>-?\d++)\s*+\}\{\s*+(?P<fq>-?\d++)\s*+\}|(?P<fp1>\d)(?P<fq1>\d))
    )
    (?:
        (?:\s*+\\?%)?+                                        # 50% is 50
        (?:\s*+(?:\^\s*+\{?+\\circ\}?+|°)                     # degrees
          |\s*+\\(?:text|mbox|mathrm)\s*+\{[^{}]*+\}          # \text{ cm}
          |\s++(?!(?:and|or|to|plus|minus|times|over|divided|by)\b)[A-Za-z]{2,}+  # 42 apples
        )*+
      | \s++                                                  # trailing spaces
    )
    """,
    re.VERBOSE,
)
_MAX_DIGITS = 1000  # past this, int() parsing is slow (and capped by CPython); leave it to math-verify
_CACHED_CHARS = 256  # longer texts are parsed without the cache (it would hold up to 4096 of them)


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain number (see the module doc), or None if it is not one."""
    return _parse_cached(text) if len(text) <= _CACHED_CHARS else _parse(text)


def _parse(text: str) -> Fraction | None:
    text = _SPACING.sub("", text.replace("{,}", ",").replace("\\ ", " ").replace("~", " ")).strip()
    text = clean_answer(text) or ""
    if len(text) > _MAX_DIGITS:
        return None
    m = _NUMERIC.fullmatch(text)
    if m is None:
        return None
    negative = (m["sign"] in ("-", "\u2212")) != (m["sign2"] in ("-", "\u2212"))
    p, q = m["p"] or m["fp"] or m["fp1"], m["q"] or m["fq"] or m["fq1"]
    if p is not None:
        if int(q) == 0:
            return None
        value = Fraction(int(p), int(q))
    elif m["int"] is None and not m["frac"]:
        return None  # "", ".", "$": no digits
    else:
        digits = (m["int"] or "0").replace(",", "") + (m["frac"] or "")
        value = Fraction(int(digits), 10 ** len(m["frac"] or ""))
    return -value if negative else value


_parse_cached = functools.lru_cache(maxsize=4096)(_parse)


def _terminates(x: Fraction) -> bool:
    """True if x has a finite decimal expansion (denominator 2^a 5^b)."""
    q = x.denominator
    for f in (2, 5):
        while q % f == 0:
            q //= f
    return q == 1


def compare_numbers(expected: str, extracted: str) -> bool | None:
    """True/False when exact arithmetic settles it, None when math-verify must decide."""
    gold, pred = parse_number(expected), parse_number(extracted)
    if gold is None or pred is None:
        return None
    if gold == pred:
        return True
    if ("." in extracted and not _terminates(gold)) or ("." in expected and not _terminates(pred)):
        return None  # 0.333 vs 1/3: a rounding question
    return False


# ---------------------------------------------------------------- worker side


def extract(response: str, formats: Sequence[str], pattern: re.Pattern[str] | None) -> str | None:
    """The answer by the first format of ``formats`` that finds one ("pattern" needs ``pattern``)."""
    for fmt in formats:
        if fmt == "final_answer":
            answer = extract_final_answer(response)
        elif fmt == "boxed":
            answer = extract_boxed(response)
        elif fmt == "gsm8k":
            answer = extract_gsm8k(response)
        else:
            answer = extract_pattern(response, pattern) if pattern is not None else None
        if answer is not None:
            return answer
    return None


def decide(item: tuple[str, Mapping[str, Any], tuple[str, ...], str | None]) -> Verdict | tuple[str, str]:
    """Worker step 1: a verdict when metadata, extraction or exact arithmetic settles it, else
    ``(expected, extracted)`` for math-verify. ``item`` is (response, metadata, formats, default pattern)."""
    response, metadata, formats, default_pattern = item
    expected = _expected(metadata)
    if isinstance(expected, Verdict):
        return expected
    if not isinstance(response, str):
        return errored(f"response must be a string, got {type(response).__name__}")
    chosen = metadata.get("answer_format")
    if chosen is not None:
        if chosen not in formats:
            return errored(f"malformed metadata: 'answer_format' must be one of {list(formats)}, got {chosen!r}")
        formats = (chosen,)
    pattern = _pattern(metadata, formats, default_pattern)
    if isinstance(pattern, Verdict):
        return pattern
    extracted = extract(response, formats, pattern)
    if extracted is None:
        accepted = [f for f in formats if f != "pattern" or pattern is not None]
        return failed(extracted=None, expected=expected, method=None,
                      reason=f"no final answer found (accepted formats: {', '.join(accepted)})")
    equal = compare_numbers(expected, extracted)
    if equal is None:
        return expected, extracted
    return (passed if equal else failed)(extracted=extracted, expected=expected, method="numeric")


def _latex(answer: str) -> str:
    """math-verify reads LaTeX between delimiters; bare answers get ``$...$``."""
    if any(d in answer for d in ("$", "\\(", "\\[", "\\boxed")):
        return answer
    return f"${answer}$"


def verify_answer(item: tuple[str, str]) -> bool:
    """Worker step 2: math-verify's ``verify(parse(gold), parse(pred))``.

    Runs in a pool worker's main thread with math-verify's own timeouts off
    (they use SIGALRM); the pool's SIGKILL bounds the time instead.
    """
    from math_verify import parse, verify

    expected, extracted = item
    gold = parse(_latex(expected), parsing_timeout=None) or parse(expected, parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify cannot parse the expected answer {expected!r}")
    pred = parse(_latex(extracted), parsing_timeout=None) or parse(extracted, parsing_timeout=None)
    return bool(pred) and verify(gold, pred, timeout_seconds=None)


_STEPS = {"decide": decide, "verify": verify_answer}


def run_step(task: tuple[str, Any]) -> Any:
    """The pool's function: ``("decide", item)`` or ``("verify", (expected, extracted))``."""
    step, item = task
    return _STEPS[step](item)


def warm_up() -> None:
    """Worker initializer: silence the "timeout disabled" warnings, load parsers once."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verify_answer(("\\frac{1}{2}", "0.5"))


# ---------------------------------------------------------------- judge


class MathJudge(Judge):
    """Pass when the extracted final answer is mathematically equal to ``metadata.answer``."""

    name: ClassVar[str] = "math"
    description: ClassVar[str] = (
        "The response's final answer ('The final answer is X', or \\boxed{X}) equals the reference answer: "
        "exact numeric comparison, else math-verify (sets, intervals, expressions) with a hard timeout."
    )
    metadata_fields: ClassVar[dict[str, str]] = {
        "answer": "reference answer: a number or a string (LaTeX allowed), e.g. 42, '1,234', '\\frac{1}{2}', '[0, 1)'",
        "answer_pattern": "optional regex for the answer (group 'answer', else 1); used if 'pattern' is accepted",
        "answer_format": "optional: the one format accepted for this sample: final_answer, boxed, gsm8k "
                         "('#### 72') or pattern",
    }

    def __init__(
        self,
        *,
        formats: Sequence[str] = FORMATS,
        answer_pattern: str | None = None,
        timeout_s: float = 5.0,
        rule_timeout_s: float = 5.0,
        workers: int | None = None,
    ) -> None:
        """
        Args:
            formats: accepted extractors, in precedence order: "final_answer", "boxed", "gsm8k",
                "pattern" ("pattern" finds nothing when no regex is set).
            answer_pattern: default regex for "pattern"; metadata ``answer_pattern`` overrides it.
            timeout_s: hard limit per math-verify comparison (the worker is killed past it).
            rule_timeout_s: hard limit per item of metadata checks, extraction and exact arithmetic.
            workers: worker processes; default: the CPUs this process may use.
        """
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
        if answer_pattern is not None and "pattern" not in formats:
            raise ValueError("answer_pattern is set but 'pattern' is not in formats")
        self.formats = tuple(formats)
        self.answer_pattern = re.compile(answer_pattern) if answer_pattern is not None else None
        self.timeout_s = timeout_s
        self.rule_timeout_s = rule_timeout_s
        self.workers = workers
        # Built now, started in setup(): pools built before the first start share the fork server's preload.
        self._pool = WorkerPool(run_step, workers=workers, timeout_s=timeout_s, initializer=warm_up,
                                preload=("math_verify", __name__))
        self._started = False

    def setup(self) -> None:
        self._pool.setup()
        self._started = True

    def close(self) -> None:
        self._pool.close()
        self._started = False

    def extract(self, response: str, pattern: re.Pattern[str] | None = None) -> str | None:
        """The answer by the first accepted format that finds one (``pattern`` defaults to the constructor's).

        Runs in this process, without a time limit: for tools and tests, not for serving.
        """
        return extract(response, self.formats, pattern or self.answer_pattern)

    def judge(self, samples: Sequence[Sample], *, deadline: float | None = None) -> list[Verdict]:
        default = self.answer_pattern.pattern if self.answer_pattern is not None else None
        tasks = [("decide", (s.response, s.metadata, self.formats, default)) for s in samples]
        verdicts: list[Verdict | None] = []
        slow: list[tuple[int, str, str]] = []  # (index, expected, extracted) for math-verify
        for result in self._map(tasks, self.rule_timeout_s, deadline):
            if not result.ok:
                verdicts.append(errored(result.reason("answer extraction")))
            elif isinstance(result.value, Verdict):
                verdicts.append(result.value)
            else:
                slow.append((len(verdicts), *result.value))
                verdicts.append(None)
        checks = self._map([("verify", (e, x)) for _, e, x in slow], self.timeout_s, deadline) if slow else []
        for (i, expected, extracted), result in zip(slow, checks, strict=True):
            verdicts[i] = _verdict(result, expected, extracted)
        return verdicts  # type: ignore[return-value]  # every slot is filled above

    def _map(self, tasks: list[tuple[str, Any]], timeout_s: float, deadline: float | None) -> list[Result]:
        try:
            if not self._started:
                self.setup()
            return self._pool.map(tasks, timeout_s=timeout_s, deadline=deadline)
        except PoolError as exc:
            return [Result("crashed", error=str(exc))] * len(tasks)


def _pattern(metadata: Mapping[str, Any], formats: Sequence[str],
             default: str | None) -> re.Pattern[str] | None | Verdict:
    """The sample's regex: metadata ``answer_pattern`` (only if "pattern" is accepted), else ``default``."""
    raw = metadata.get("answer_pattern")
    if raw is None or "pattern" not in formats:
        return re.compile(default) if default is not None else None
    if not isinstance(raw, str):
        return errored("malformed metadata: 'answer_pattern' must be a string")
    try:
        return re.compile(raw)
    except re.error as exc:
        return errored(f"malformed metadata: invalid 'answer_pattern' regex: {exc}")


def _expected(metadata: Mapping[str, Any]) -> str | Verdict:
    """``metadata.answer`` as a string, or an error verdict when it is missing or malformed."""
    if not isinstance(metadata, Mapping):
        return errored(f"malformed metadata: expected an object, got {type(metadata).__name__}")
    if "answer" not in metadata:
        return errored("malformed metadata: missing 'answer'")
    answer = metadata["answer"]
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return errored(f"malformed metadata: 'answer' must be a string or number, got {type(answer).__name__}")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            return errored(f"malformed metadata: 'answer' is not a finite number: {answer}")
        answer = format(Decimal(repr(answer)), "f")  # 0.1 -> "0.1", 1e20 -> "100000000000000000000"
    answer = str(answer).strip()
    if not answer:
        return errored("malformed metadata: 'answer' is empty")
    return answer


def _verdict(result: Result, expected: str, extracted: str) -> Verdict:
    detail = {"extracted": extracted, "expected": expected, "method": "math_verify"}
    if result.ok:
        return (passed if result.value else failed)(**detail)
    return errored(result.reason("math-verify"), **detail)
