"""MathJudge: extraction, equivalence (numeric fast path and math-verify), malformed metadata."""

from __future__ import annotations

import re
import sys
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cgpo.services.judges import math as math_judge
from cgpo.services.judges.base import Sample
from cgpo.services.judges.math import (
    MathJudge,
    clean_answer,
    compare_numbers,
    extract_boxed,
    extract_final_answer,
    parse_number,
)
from cgpo.services.judges.pool import PoolError


@pytest.fixture(scope="module")
def judge():
    j = MathJudge(workers=2, timeout_s=10)
    j.setup()
    yield j
    j.close()


def one(judge: MathJudge, response: str, answer: object = None, **metadata: object):
    if answer is not None:
        metadata["answer"] = answer
    return judge.judge([Sample(prompt="q", response=response, metadata=metadata)])[0]


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The final answer is 42", "42"),
        ("The final answer is 42.", "42"),
        ("So... The final answer is 3.14.", "3.14"),
        ("**The final answer is 42.**", "42"),
        ("The final answer is **42**.", "42"),
        ("**Final Answer:** 42", "42"),
        ("The final answer is: $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("The final answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("the final answer is $1.5$ . ok", "1.5"),
        ("The final answer is 1. Wait. The final answer is 2.", "2"),
        ("Final Answer: The final answer is $x^2$.\nI hope it is correct.", "x^2"),
        ("The final answer is \\$1,234.", "\\$1,234"),
        ("The final answer is $1$ and $2$.", "$1$ and $2$"),
        ("The final answer is $\\{1, 2\\}$.", "\\{1, 2\\}"),
    ],
)
def test_extract_final_answer(response, expected):
    assert extract_final_answer(response) == expected


@pytest.mark.parametrize(
    "response", ["no answer here", "The final answer is", "The final answer is .", "final answers"]
)
def test_extract_final_answer_none(response):
    assert extract_final_answer(response) is None


def test_extract_boxed_nested_and_last():
    assert extract_boxed("\\boxed{1} then \\boxed{\\frac{\\sqrt{3}}{2}}") == "\\frac{\\sqrt{3}}{2}"
    assert extract_boxed("$\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{2} and a broken \\boxed{3") == "2"
    assert extract_boxed("no box") is None


def test_formats_control_what_is_accepted():
    boxed_only = MathJudge(formats=("boxed",))
    assert boxed_only.extract("The final answer is 5.") is None
    assert boxed_only.extract("so \\boxed{5}") == "5"
    final_only = MathJudge(formats=("final_answer",))
    assert final_only.extract("so \\boxed{5}") is None
    # Precedence follows the order of formats.
    text = "\\boxed{4}. The final answer is 5."
    assert MathJudge(formats=("final_answer", "boxed")).extract(text) == "5"
    assert MathJudge(formats=("boxed", "final_answer")).extract(text) == "4"


def test_gsm8ks_hashes_are_a_final_answer_format(judge):
    worked = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert judge.extract(worked) == "72"
    assert one(judge, worked, "72").verdict == "pass"
    assert one(judge, "#### 1,234\n", 1234).verdict == "pass"
    assert one(judge, "#### 71", 72).verdict == "fail"
    assert judge.extract("#### 3\nthen more #### 4 inline") == "3"  # only a line that starts with ####
    assert judge.extract("####\n") is None
    # earlier formats win: a boxed answer is read before the hashes
    assert judge.extract("\\boxed{5}\n#### 6") == "5"


def test_answer_format_in_the_metadata_accepts_that_format_alone(judge):
    assert one(judge, "The final answer is 72.", 72, answer_format="gsm8k").verdict == "fail"
    assert one(judge, "so\n#### 72", 72, answer_format="gsm8k").verdict == "pass"
    assert one(judge, "so\n#### 72", 72, answer_format="boxed").verdict == "fail"
    bad = one(judge, "#### 72", 72, answer_format="hashes")
    assert bad.verdict == "error" and "answer_format" in bad.detail["error"]


def test_pattern_from_constructor_and_metadata():
    with MathJudge(formats=("pattern",), answer_pattern=r"ANSWER:\s*(\S+)", workers=1) as j:
        assert one(j, "work... ANSWER: 7", 7).verdict == "pass"
        # metadata overrides the constructor's pattern; the named group wins.
        v = one(j, "x = 7 ; result=<8>", 8, answer_pattern=r"result=<(?P<answer>[^>]+)>")
        assert v.verdict == "pass" and v.detail["extracted"] == "8"
    # Not accepted -> the right answer in the wrong format fails.
    with MathJudge(formats=("final_answer",), workers=1) as j:
        v = one(j, "ANSWER: 7", 7, answer_pattern=r"ANSWER:\s*(\S+)")
    assert v.verdict == "fail" and v.detail["extracted"] is None


def test_bad_constructor_options():
    with pytest.raises(ValueError):
        MathJudge(formats=("latex",))
    with pytest.raises(ValueError):
        MathJudge(formats=())
    with pytest.raises(ValueError):
        MathJudge(formats=("boxed",), answer_pattern="x")


# ---------------------------------------------------------------- numbers (fast path)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234", 1234),
        ("1,234.50", 1234.5),
        ("$5", 5),
        ("\\$5", 5),
        ("-$5", -5),
        ("$-5$", -5),
        ("5.0", 5),
        ("-3", -3),
        ("\u22123", -3),
        ("50%", 50),
        ("50\\%", 50),
        ("42 apples", 42),
        ("5\\text{ cm}", 5),
        ("90^\\circ", 90),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1/2", 0.5),
        ("\\frac{1}{2}", 0.5),
        ("\\dfrac12", 0.5),
        ("-\\frac{3}{4}", -0.75),
        ("10{,}000", 10000),
        ("1\\,000", 1000),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1,23", "5 and 6", "x", "2x", "\\sqrt{2}", "1/0", "$", "", "1e5", "\\frac{1}{0}"])
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_compare_numbers_is_exact_and_defers_rounding_questions():
    assert compare_numbers("0.5", "\\frac{1}{2}") is True
    assert compare_numbers("1000", "1,000") is True
    assert compare_numbers("0.1", "0.10000000000000001") is False  # no float equality
    assert compare_numbers("1/3", "0.333333") is None  # math-verify decides rounding
    assert compare_numbers("1/3", "2/3") is False
    assert compare_numbers("x", "5") is None


# ---------------------------------------------------------------- judge verdicts


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("The final answer is 0.5.", "\\frac{1}{2}"),
        ("The final answer is $\\frac{1}{2}$.", "0.5"),
        ("The final answer is 1/2.", 0.5),
        ("The final answer is 1,000.", "1000"),
        ("The final answer is 1000.", "1,000"),
        ("The final answer is $1,000.", 1000),
        ("The final answer is -3.", -3),
        ("The final answer is 5.0", 5),
        ("Thus \\boxed{42}", "42"),
    ],
)
def test_numeric_equivalences_pass_on_the_fast_path(judge, response, answer):
    v = one(judge, response, answer)
    assert v.verdict == "pass", v
    assert v.detail["method"] == "numeric"


@pytest.mark.parametrize(
    ("response", "answer"),
    [("The final answer is 41.", "42"), ("The final answer is 3.", "-3"), ("The final answer is 0.25.", "1/2")],
)
def test_wrong_numbers_fail(judge, response, answer):
    v = one(judge, response, answer)
    assert v.verdict == "fail" and v.detail["method"] == "numeric"


@pytest.mark.parametrize(
    ("response", "answer", "verdict"),
    [
        ("The final answer is $(x+1)^2$.", "x^2+2x+1", "pass"),
        ("The final answer is $(x+1)^2$.", "x^2+1", "fail"),
        ("The final answer is $\\{3, 1, 2\\}$.", "\\{1,2,3\\}", "pass"),
        ("The final answer is $[1, 2)$.", "[1,2)", "pass"),
        ("The final answer is $(1, 2]$.", "[1,2)", "fail"),
        ("The final answer is $\\sqrt{18}$.", "3\\sqrt{2}", "pass"),
        ("The final answer is 0.333333.", "\\frac{1}{3}", "pass"),
        ("The final answer is $\\frac{2}{4}$ apples.", "0.5", "pass"),
    ],
)
def test_math_verify_equivalences(judge, response, answer, verdict):
    v = one(judge, response, answer)
    assert v.verdict == verdict, v
    assert v.detail["method"] == "math_verify"


def test_verdict_detail(judge):
    v = one(judge, "The final answer is 42.", 42)
    assert v.detail == {"extracted": "42", "expected": "42", "method": "numeric"}


def test_no_answer_fails_and_says_so(judge):
    v = one(judge, "I think it is 42", "42")
    assert v.verdict == "fail"
    assert v.detail["extracted"] is None and "no final answer" in v.detail["reason"]


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"answer": None},
        {"answer": [1, 2]},
        {"answer": True},
        {"answer": float("nan")},
        {"answer": "   "},
        {"answer": "1", "answer_pattern": "("},
        {"answer": "1", "answer_pattern": 5},
    ],
)
def test_malformed_metadata_is_an_error(judge, metadata):
    v = judge.judge([Sample(prompt="q", response="The final answer is 1.", metadata=metadata)])[0]
    assert v.verdict == "error" and "malformed metadata" in v.detail["error"]


def test_unparseable_expected_answer_is_an_error(judge):
    v = one(judge, "The final answer is $x$.", "$$")
    assert v.verdict == "error" and "cannot parse the expected answer" in v.detail["error"]


def test_batch_mixes_paths_and_keeps_order(judge):
    samples = [
        Sample("q", "The final answer is 7.", {"answer": 7}),
        Sample("q", "The final answer is $(x+1)^2$.", {"answer": "x^2+2x+1"}),
        Sample("q", "nothing", {"answer": 1}),
        Sample("q", "The final answer is 8.", {"answer": 7}),
        Sample("q", "The final answer is 1.", {}),
        Sample("q", "The final answer is $x^2$.", {"answer": "x^3"}),
    ]
    verdicts = [v.verdict for v in judge.judge(samples)]
    assert verdicts == ["pass", "pass", "fail", "fail", "error", "fail"]


def test_worker_timeout_is_an_error_verdict():
    j = MathJudge(workers=1, timeout_s=1e-6)  # no parse finishes in a microsecond
    j.setup()
    try:
        v = one(j, "The final answer is $(x+1)^2$.", "x^2+2x+1")
        assert v.verdict == "error" and "timed out" in v.detail["error"]
        assert v.detail["method"] == "math_verify"
        # The fast path is unaffected.
        assert one(j, "The final answer is 3.", 3).verdict == "pass"
    finally:
        j.close()


def test_broken_pool_is_an_error_verdict(monkeypatch):
    j = MathJudge(workers=1)

    class Broken:
        def setup(self):
            pass

        def map(self, items, **kwargs):
            raise PoolError("workers keep dying")

    monkeypatch.setattr(j, "_pool", Broken())
    v = one(j, "The final answer is $(x+1)^2$.", "x^2+2x+1")
    assert v.verdict == "error" and "workers keep dying" in v.detail["error"]


# ---------------------------------------------------------------- linear-time extraction
# The extraction and number parsing were rewritten to run in linear time. The reference
# below is the earlier, backtracking code, kept verbatim as the definition: on inputs small
# enough for it to finish, the new code must give exactly its answers.

REF_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
REF_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
REF_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("*", "*"), ("__", "__"))
REF_SPACING = re.compile(r"\\[,!;:]|\\left|\\right")
REF_NUMERIC = re.compile(
    r"""
    (?P<sign>[-+\u2212]?)\s*
    (?:\\?\$|\\text\{\\\$\}|€|£|¥)?\s*
    (?P<sign2>[-+\u2212]?)\s*
    (?:
        (?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d*))?
      | (?P<p>\d+)\s*/\s*(?P<q>\d+)
      | \\[dt]?frac(?:\{\s*(?P<fp>-?\d+)\s*\}\{\s*(?P<fq>-?\d+)\s*\}|(?P<fp1>\d)(?P<fq1>\d))
    )
    \s*(?:\\?%)?
    (?:\s*(?:\^\s*\{?\\circ\}?|°)
      |\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}
      |\s+(?!(?:and|or|to|plus|minus|times|over|divided|by)\b)[A-Za-z]{2,}
    )*
    """,
    re.VERBOSE,
)


def ref_extract_final_answer(text):
    text = text.replace("**", "")
    last = None
    for match in REF_FINAL_ANSWER.finditer(text):
        last = match
    if last is None:
        return None
    return ref_clean_answer(ref_sentence(text, last.end()))


def ref_extract_boxed(text):
    for match in reversed(list(REF_BOXED.finditer(text))):
        content = ref_balanced(text, match.end())
        if content is not None:
            return ref_clean_answer(content)
    return None


def ref_clean_answer(answer):
    answer = answer.strip()
    while True:
        before = answer
        answer = answer.strip().rstrip(".").strip()
        for left, right in REF_DELIMITERS:
            inner = answer[len(left) : -len(right)]
            if answer.startswith(left) and answer.endswith(right) and inner and left not in inner:
                answer = inner
                break
        if REF_BOXED.search(answer):
            answer = ref_extract_boxed(answer) or ""
        if answer == before:
            return answer or None


def ref_sentence(text, start):
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


def ref_balanced(text, start):
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def ref_parse_number(text):
    text = REF_SPACING.sub("", text.replace("{,}", ",").replace("\\ ", " ").replace("~", " ")).strip()
    text = ref_clean_answer(text) or ""
    m = REF_NUMERIC.fullmatch(text)
    if m is None or len(text) > 1000:
        return None
    negative = (m["sign"] in ("-", "\u2212")) != (m["sign2"] in ("-", "\u2212"))
    p, q = m["p"] or m["fp"] or m["fp1"], m["q"] or m["fq"] or m["fq1"]
    if p is not None:
        if int(q) == 0:
            return None
        value = Fraction(int(p), int(q))
    elif m["int"] is None and not m["frac"]:
        return None
    else:
        digits = (m["int"] or "0").replace(",", "") + (m["frac"] or "")
        value = Fraction(int(digits), 10 ** len(m["frac"] or ""))
    return -value if negative else value


WHITESPACE = [" ", " ", "  ", "\t", "\n", "\x0b", "\x1c", "\xa0", "\u2028", "\u3000"]
NOISE = [*WHITESPACE, "-", "+", "$", "\\", "{", "}", "%", ",", ".", "/", "x", "!", "*", "\\boxed{", "and", "cm"]
LINEAR = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def texts(tokens, max_size):
    return st.lists(st.sampled_from(tokens), max_size=max_size).map("".join)


def maybe(tokens):
    return st.one_of(st.just(""), st.sampled_from(tokens))


# [sign] [currency] [sign] number [%] [units] with optional spaces between, then a few tokens of
# noise inserted anywhere: most examples are numbers or near misses, not token soup.
SPACES = texts(WHITESPACE, 3)
NUMBERS = st.sampled_from([
    "", "7", "12", "1,234", "1,234,567", "1,23", "1,2345", "1.5", ".5", "5.", ".", "0.333", "3/4", "3 / 4", "1/0",
    "\\frac{1}{2}", "\\frac { 1 } { 2 }", "\\frac12", "\\dfrac{ -1 }{2}", "\\tfrac{3}{0}", "\\frac1",
])
UNITS = st.sampled_from([
    "^\\circ", "^{\\circ}", "^ {\\circ", "°", "\\text{ cm}", "\\mbox {m}", "\\mathrm{kg}", "\\text{a{b}}",
    "apples", "cm", "c", "and", "andrew", "by", "x2",
])
NUMBER_LIKE = st.tuples(
    maybe(["-", "+", "\u2212"]), SPACES, maybe(["$", "\\$", "\\text{\\$}", "€", "£", "¥"]), SPACES,
    maybe(["-", "+"]), SPACES, NUMBERS, SPACES, maybe(["%", "\\%"]),
    st.lists(st.tuples(SPACES, UNITS).map("".join), max_size=3).map("".join), SPACES,
).map("".join)


@st.composite
def noisy(draw, base, noise):
    text = draw(base)
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(noise)) + text[i:]
    return text


NUMBER_TEXTS = st.one_of(noisy(NUMBER_LIKE, NOISE), texts(NOISE, 8))

# Answers wrapped in delimiters, boxes, final periods and spaces, and "final answer" sentences.
ANSWER_PIECES = [
    *WHITESPACE, ".", ". ", " .", "..", "$", "$$", "\\(", "\\)", "\\[", "\\]", "*", "**", "__", "{", "}", "\\{",
    "\\boxed{", "\\boxed {", "\\fbox{", "x", "42", "a.b", "\\$",
]
WRAPPERS = [("$", "$"), ("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("*", "*"), ("__", "__"),
            ("\\boxed{", "}"), ("\\fbox {", "}"), ("{", "}"), (" ", " ."), ("", ". ")]


@st.composite
def wrapped(draw):
    text = draw(texts(ANSWER_PIECES, 4))
    for _ in range(draw(st.integers(0, 4))):
        left, right = draw(st.sampled_from(WRAPPERS))
        text = left + text + right
    return text


ANSWERS = st.one_of(noisy(wrapped(), ANSWER_PIECES), texts(ANSWER_PIECES, 12))
BOXES = st.one_of(ANSWERS, texts(["\\boxed{", "\\fbox{", "\\boxed {", "{", "}", "}", "x", "42", "$", " ", "."], 14))
SENTENCES = st.tuples(
    texts(["", "x ", "So ", "**", "The final answer is 1. ", "\n"], 2),
    st.sampled_from(["The final answer is ", "Final Answer: ", "final  answer is: ", "**Final answer:** ",
                     "final answer"]),
    ANSWERS, texts(["", ".", ". ", ".\n", "\n", " I hope. ", "$", "}", "{"], 3),
).map("".join)


def number_value(pattern, text):
    """(sign, value) read from a full match of ``pattern``; None when it does not match or has no digits."""
    m = pattern.fullmatch(text)
    if m is None or not (m["int"] or m["frac"] or m["p"] or m["fp"] or m["fp1"]):
        return None
    negative = (m["sign"] in ("-", "\u2212")) != (m["sign2"] in ("-", "\u2212"))
    return negative, m["int"], m["frac"], m["p"] or m["fp"] or m["fp1"], m["q"] or m["fq"] or m["fq1"]


@LINEAR
@given(NUMBER_TEXTS)
def test_numeric_pattern_reads_what_the_backtracking_pattern_reads(text):
    # On the raw text (parse_number strips it first): trailing spaces count here.
    assert number_value(math_judge._NUMERIC, text) == number_value(REF_NUMERIC, text)


@LINEAR
@given(NUMBER_TEXTS)
def test_parse_number_equals_the_backtracking_pattern(text):
    assert math_judge._parse(text) == ref_parse_number(text)


@LINEAR
@given(ANSWERS)
def test_clean_answer_equals_the_reference(text):
    assert clean_answer(text) == ref_clean_answer(text)


@LINEAR
@given(BOXES)
def test_extract_boxed_equals_the_reference(text):
    assert extract_boxed(text) == ref_extract_boxed(text)


@LINEAR
@given(SENTENCES)
def test_extract_final_answer_equals_the_reference(text):
    assert extract_final_answer(text) == ref_extract_final_answer(text)


def test_whitespace_table_is_every_unicode_space():
    assert math_judge._WHITESPACE == "".join(filter(str.isspace, map(chr, range(sys.maxunicode + 1))))


# Inputs that took the backtracking code 5-15 s (or hours, for the first at 1,000 spaces).
PATHOLOGICAL = {
    "final answer, sign, spaces, !": lambda k: "The final answer is -" + " " * (110 * k) + "!",
    "number, spaces, !": lambda k: "The final answer is 1" + " " * (20_000 * k) + "!",
    "unclosed boxes": lambda k: "\\boxed{" * (8_000 * k),
    "nested boxes": lambda k: "The final answer is " + "\\boxed{" * (8_000 * k) + "7" + "}" * (8_000 * k),
    "boxed, dots and spaces": lambda k: "\\boxed{7" + " ." * (20_000 * k) + "}",
    "braces": lambda k: "The final answer is {" + "{" * (50_000 * k) + ".",
}


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_pathological_answers_take_linear_time(name):
    """At the reported size and 10x, extraction and number parsing take milliseconds."""
    for k in (1, 10):
        text = PATHOLOGICAL[name](k)
        start = time.perf_counter()
        extracted = MathJudge().extract(text)
        if extracted is not None:
            compare_numbers("7", extracted)
        assert time.perf_counter() - start < 0.5 * k, (name, k)


# ---------------------------------------------------------------- limits and deadlines

NEVER_ENDS = "The final answer is $9^{9^{9}}$."  # math-verify evaluates the power: minutes


def test_extraction_timeout_is_an_error_verdict():
    with MathJudge(workers=1, rule_timeout_s=1e-6) as j:  # a 2 MB response takes milliseconds to read
        v = one(j, "word " * 400_000 + "The final answer is 3.", 3)
    assert v.verdict == "error" and v.detail["error"] == "answer extraction timed out after 1e-06s"


def test_deadline_stops_math_verify_and_the_next_batch_is_answered_normally():
    with MathJudge(workers=2, timeout_s=60) as j:
        start = time.monotonic()
        verdicts = j.judge([Sample("q", NEVER_ENDS, {"answer": "1"})] * 30 + [Sample("q", "The final answer is 2.",
                                                                                    {"answer": 2})],
                           deadline=time.time() + 2)
        elapsed = time.monotonic() - start
        assert 1.9 < elapsed < 3.0  # not 30 items x 60 s / 2 workers
        assert verdicts[-1].verdict == "pass"  # decided by exact arithmetic before the deadline
        for v in verdicts[:-1]:
            assert v.verdict == "error" and "deadline" in v.detail["error"], v
            assert v.detail["method"] == "math_verify" and v.detail["extracted"] == "9^{9^{9}}"
        start = time.monotonic()
        assert one(j, "The final answer is $(x+1)^2$.", "x^2+2x+1").verdict == "pass"
        assert time.monotonic() - start < 5.0  # respawned workers, math-verify loaded again


def test_a_past_deadline_runs_nothing():
    with MathJudge(workers=1) as j:
        restarts = j._pool.restarts
        [v] = j.judge([Sample("q", NEVER_ENDS, {"answer": "1"})], deadline=time.time() - 1)
        assert v.verdict == "error" and "deadline" in v.detail["error"]
        assert j._pool.restarts == restarts  # no worker was busy, none was killed
