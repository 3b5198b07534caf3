"""The ``math`` judge: the response's final answer equals ``metadata.answer`` (SPEC §2).

Extraction (parent process, pure string work). Extractors are tried in the
order of ``formats`` (default: all three, in this order); the first that finds
an answer wins:

* ``final_answer`` — the last "The final answer is X" (also "Final answer: X"),
  as in the CGPO paper; X runs to the end of that sentence (a ``.`` outside
  ``$...$`` and braces followed by a space, or the end of the line). Markdown
  bold, ``$...$``/``\\(...\\)`` and a ``\\boxed{}`` around X are removed.
* ``boxed`` — the content of the last ``\\boxed{...}`` (nested braces allowed).
* ``pattern`` — the last match of a regex (metadata ``answer_pattern``, else the
  constructor's): group ``answer`` if named, else group 1, else the match.

A right answer in a format that is not accepted is a violation (``fail``).

Comparison. The fast path, in the parent, decides when both answers are plain
numbers (exact ``Fraction`` arithmetic, never floats):

* ``1,234`` = ``1234`` (thousands commas in groups of three; ``1,23`` is not a number),
* currency signs are dropped: ``$5`` = ``\\$5`` = ``5``; ``-$3`` = ``-3``,
* ``50%`` = ``50`` (GSM8K writes percentages as the number of percent),
* trailing units are dropped: ``42 apples``, ``5\\text{ cm}``, ``90^\\circ``,
* ``0.5`` = ``1/2`` = ``\\frac{1}{2}`` = ``\\dfrac12``; ``5.0`` = ``5``; ``-3``, ``+3``.

Different numbers fail, except a decimal against a fraction with no finite
decimal expansion (``0.333`` vs ``1/3``): rounding conventions decide that, so
it goes to math-verify like every non-numeric answer (sets, intervals,
expressions, ``\\sqrt{}``...). math-verify runs in a ``WorkerPool`` whose hard
kill enforces ``timeout_s``; its own SIGALRM timeouts are disabled there.

Trust: ``answer_pattern`` regexes run in the parent; they are configuration
(dataset or operator), not model output, and are not time-limited.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

from services.common.schemas import Verdict
from services.judges.base import Judge, Sample, errored, failed, passed
from services.judges.pool import PoolError, Result, WorkerPool

FORMATS = ("final_answer", "boxed", "pattern")

# ---------------------------------------------------------------- extraction

_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("*", "*"), ("__", "__"))


def extract_final_answer(text: str) -> str | None:
    """X from the last "The final answer is X" sentence, cleaned; None if absent."""
    text = text.replace("**", "")  # "**Final answer:** 3" reads as "Final answer: 3"
    last = None
    for last in _FINAL_ANSWER.finditer(text):
        pass
    if last is None:
        return None
    return clean_answer(_sentence(text, last.end()))


def extract_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}``; None if there is none."""
    for match in reversed(list(_BOXED.finditer(text))):
        content = _balanced(text, match.end())
        if content is not None:
            return clean_answer(content)
    return None


def extract_pattern(text: str, pattern: re.Pattern[str]) -> str | None:
    """The last match of ``pattern``: its group ``answer``, else group 1, else the match."""
    last = None
    for last in pattern.finditer(text):
        pass
    if last is None:
        return None
    if "answer" in pattern.groupindex:
        value = last.group("answer")
    else:
        value = last.group(1) if pattern.groups else last.group(0)
    return clean_answer(value) if value is not None else None


def clean_answer(answer: str) -> str | None:
    """Strip markdown, math delimiters, a whole ``\\boxed{}`` and a final period."""
    answer = answer.strip()
    while True:
        before = answer
        answer = answer.strip().rstrip(".").strip()
        for left, right in _DELIMITERS:
            inner = answer[len(left) : -len(right)]
            if answer.startswith(left) and answer.endswith(right) and inner and left not in inner:
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
    end = len(text)
    for i in range(start, len(text)):
        c = text[i]
        if c == "\n" and not in_math:
            end = i
            break
        if c == "$" and (i == 0 or text[i - 1] != "\\"):
            in_math = not in_math
        elif c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif c == "." and not in_math and depth == 0 and (i + 1 == len(text) or text[i + 1].isspace()):
            end = i
            break
    return text[start:end]


def _balanced(text: str, start: int) -> str | None:
    """Content from ``start`` (just past a '{') to its matching '}'; None if unbalanced."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


# ---------------------------------------------------------------- numbers

_SPACING = re.compile(r"\\[,!;:]|\\left|\\right")  # "1\\,000" and "10,\\!000" are 1000
_NUMERIC = re.compile(
    r"""
    (?P<sign>[-+\u2212]?)\s*
    (?:\\?\$|\\text\{\\\$\}|€|£|¥)?\s*                        # currency
    (?P<sign2>[-+\u2212]?)\s*
    (?:
        (?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d*))?   # 1,234.5  12  .5  5.
      | (?P<p>\d+)\s*/\s*(?P<q>\d+)                            # 3/4
      | \\[dt]?frac(?:\{\s*(?P<fp>-?\d+)\s*\}\{\s*(?P<fq>-?\d+)\s*\}|(?P<fp1>\d)(?P<fq1>\d))
    )
    \s*(?:\\?%)?                                              # 50% is 50
    (?:\s*(?:\^\s*\{?\\circ\}?|°)                            # degrees
      |\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}                 # \text{ cm}
      |\s+(?!(?:and|or|to|plus|minus|times|over|divided|by)\b)[A-Za-z]{2,}  # 42 apples
    )*
    """,
    re.VERBOSE,
)
_MAX_DIGITS = 1000  # past this, int() parsing is slow (and capped by CPython); leave it to math-verify


@functools.lru_cache(maxsize=4096)
def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain number (see the module doc), or None if it is not one."""
    text = _SPACING.sub("", text.replace("{,}", ",").replace("\\ ", " ").replace("~", " ")).strip()
    text = clean_answer(text) or ""
    m = _NUMERIC.fullmatch(text)
    if m is None or len(text) > _MAX_DIGITS:
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


# ---------------------------------------------------------------- math-verify (worker side)


def _latex(answer: str) -> str:
    """math-verify reads LaTeX between delimiters; bare answers get ``$...$``."""
    if any(d in answer for d in ("$", "\\(", "\\[", "\\boxed")):
        return answer
    return f"${answer}$"


def verify_answer(item: tuple[str, str]) -> bool:
    """Worker function: math-verify's ``verify(parse(gold), parse(pred))``.

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
    }

    def __init__(
        self,
        *,
        formats: Sequence[str] = ("final_answer", "boxed", "pattern"),
        answer_pattern: str | None = None,
        timeout_s: float = 5.0,
        workers: int | None = None,
    ) -> None:
        """
        Args:
            formats: accepted extractors, in precedence order: "final_answer", "boxed",
                "pattern" ("pattern" finds nothing when no regex is set).
            answer_pattern: default regex for "pattern"; metadata ``answer_pattern`` overrides it.
            timeout_s: hard limit per math-verify comparison (the worker is killed past it).
            workers: math-verify processes; default: the CPUs this process may use.
        """
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
        if answer_pattern is not None and "pattern" not in formats:
            raise ValueError("answer_pattern is set but 'pattern' is not in formats")
        self.formats = tuple(formats)
        self.answer_pattern = re.compile(answer_pattern) if answer_pattern is not None else None
        self.timeout_s = timeout_s
        self.workers = workers
        self._pool: WorkerPool | None = None

    def setup(self) -> None:
        if self._pool is None:
            self._pool = WorkerPool(
                verify_answer,
                workers=self.workers,
                timeout_s=self.timeout_s,
                initializer=warm_up,
                preload=("math_verify", __name__),
            )
        self._pool.setup()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def judge(self, samples: Sequence[Sample]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(samples)
        slow: list[tuple[int, str, str]] = []  # (index, expected, extracted) for math-verify
        for i, sample in enumerate(samples):
            verdict = self._judge_fast(sample)
            if isinstance(verdict, Verdict):
                verdicts[i] = verdict
            else:
                slow.append((i, *verdict))
        if slow:
            for (i, expected, extracted), result in zip(slow, self._verify(slow), strict=True):
                verdicts[i] = _verdict(result, expected, extracted, self.timeout_s)
        return verdicts  # type: ignore[return-value]  # every slot is filled above

    def _judge_fast(self, sample: Sample) -> Verdict | tuple[str, str]:
        """A verdict when metadata, extraction or exact arithmetic settles it, else (expected, extracted)."""
        expected = _expected(sample.metadata)
        if isinstance(expected, Verdict):
            return expected
        if not isinstance(sample.response, str):
            return errored(f"response must be a string, got {type(sample.response).__name__}")
        pattern = self._pattern(sample.metadata)
        if isinstance(pattern, Verdict):
            return pattern
        extracted = self.extract(sample.response, pattern)
        if extracted is None:
            return failed(
                extracted=None,
                expected=expected,
                method=None,
                reason=f"no final answer found (accepted formats: {', '.join(self._accepted(pattern))})",
            )
        equal = compare_numbers(expected, extracted)
        if equal is None:
            return expected, extracted
        return (passed if equal else failed)(extracted=extracted, expected=expected, method="numeric")

    def extract(self, response: str, pattern: re.Pattern[str] | None = None) -> str | None:
        """The answer by the first accepted format that finds one (``pattern`` defaults to the constructor's)."""
        pattern = pattern or self.answer_pattern
        for fmt in self.formats:
            if fmt == "final_answer":
                answer = extract_final_answer(response)
            elif fmt == "boxed":
                answer = extract_boxed(response)
            else:
                answer = extract_pattern(response, pattern) if pattern is not None else None
            if answer is not None:
                return answer
        return None

    def _accepted(self, pattern: re.Pattern[str] | None) -> list[str]:
        return [f for f in self.formats if f != "pattern" or pattern is not None]

    def _pattern(self, metadata: Mapping[str, Any]) -> re.Pattern[str] | None | Verdict:
        """The sample's regex: metadata ``answer_pattern`` (only if "pattern" is accepted), else the constructor's."""
        raw = metadata.get("answer_pattern")
        if raw is None or "pattern" not in self.formats:
            return self.answer_pattern
        if not isinstance(raw, str):
            return errored("malformed metadata: 'answer_pattern' must be a string")
        try:
            return re.compile(raw)
        except re.error as exc:
            return errored(f"malformed metadata: invalid 'answer_pattern' regex: {exc}")

    def _verify(self, slow: list[tuple[int, str, str]]) -> list[Result]:
        if self._pool is None:
            self.setup()
        assert self._pool is not None
        try:
            return self._pool.map([(expected, extracted) for _, expected, extracted in slow])
        except PoolError as exc:
            return [Result("crashed", error=str(exc))] * len(slow)


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


def _verdict(result: Result, expected: str, extracted: str, timeout_s: float) -> Verdict:
    detail = {"extracted": extracted, "expected": expected, "method": "math_verify"}
    if result.ok:
        return (passed if result.value else failed)(**detail)
    if result.status == "timeout":
        return errored(f"math-verify timed out after {timeout_s:g}s", **detail)
    return errored(f"math-verify {result.status}: {result.error}", **detail)
