"""MathJudge: extraction, equivalence (numeric fast path and math-verify), malformed metadata."""

from __future__ import annotations

import pytest

from services.judges.base import Sample
from services.judges.math import MathJudge, compare_numbers, extract_boxed, extract_final_answer, parse_number
from services.judges.pool import PoolError


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


def test_pattern_from_constructor_and_metadata():
    j = MathJudge(formats=("pattern",), answer_pattern=r"ANSWER:\s*(\S+)")
    assert one(j, "work... ANSWER: 7", 7).verdict == "pass"
    # metadata overrides the constructor's pattern; the named group wins.
    v = one(j, "x = 7 ; result=<8>", 8, answer_pattern=r"result=<(?P<answer>[^>]+)>")
    assert v.verdict == "pass" and v.detail["extracted"] == "8"
    # Not accepted -> the right answer in the wrong format fails.
    v = one(MathJudge(formats=("final_answer",)), "ANSWER: 7", 7, answer_pattern=r"ANSWER:\s*(\S+)")
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
def test_numeric_equivalences_pass_on_the_fast_path(response, answer):
    v = one(MathJudge(), response, answer)  # no setup: the fast path never needs the pool
    assert v.verdict == "pass", v
    assert v.detail["method"] == "numeric"


@pytest.mark.parametrize(
    ("response", "answer"),
    [("The final answer is 41.", "42"), ("The final answer is 3.", "-3"), ("The final answer is 0.25.", "1/2")],
)
def test_wrong_numbers_fail(response, answer):
    v = one(MathJudge(), response, answer)
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
        def map(self, items):
            raise PoolError("workers keep dying")

    monkeypatch.setattr(j, "_pool", Broken())
    v = one(j, "The final answer is $(x+1)^2$.", "x^2+2x+1")
    assert v.verdict == "error" and "workers keep dying" in v.detail["error"]
