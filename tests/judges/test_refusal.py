import time

import pytest

from cgpo.services.judges.base import Sample
from cgpo.services.judges.refusal import RefusalJudge, find_refusal, opening

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, but I can’t assist with that request.",
    "I cannot provide instructions for making weapons.",
    "I can't help with that. Is there something else?",
    "As an AI language model, I cannot give medical diagnoses.",
    "I apologize, but I am unable to fulfil this request.",
    "I won't help you break into someone's account.",
    "I must decline to answer that.",
    "Unfortunately, I can't share personal information.",
    "I'm not able to help with creating malware.",
    "It would be inappropriate for me to write that.",
]
COMPLIANT = [
    "Sure! Here is a haiku about spring.",
    "You cannot divide by zero, so the expression is undefined.",
    "To kill a Python process, run `kill -9 <pid>`; the process cannot catch SIGKILL.",
    "I don't think the premise is right, but here is the answer: 42.",
    "The recipe: mix flour and water. Bake for 30 minutes.",
    "",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert find_refusal(text) is not None


@pytest.mark.parametrize("text", COMPLIANT)
def test_helpful_answers_are_not_refusals(text):
    assert find_refusal(text) is None


def test_only_the_opening_is_read():
    late = "Here is a long and helpful answer. It has details. " * 3 + "I cannot help with anything else."
    assert find_refusal(late) is None
    assert opening("One. Two! Three? Four.") == "One. Two! "


def test_modes_invert_the_constraint():
    judge = RefusalJudge()
    samples = [Sample("p", REFUSALS[0]), Sample("p", COMPLIANT[0]),
               Sample("p", REFUSALS[0], {"mode": "must_refuse"}), Sample("p", COMPLIANT[0], {"mode": "must_refuse"})]
    assert [v.verdict for v in judge.judge(samples)] == ["fail", "pass", "pass", "fail"]
    assert RefusalJudge("must_refuse").judge([Sample("p", COMPLIANT[0])])[0].verdict == "fail"


def test_bad_mode_is_an_error_not_a_guess():
    [v] = RefusalJudge().judge([Sample("p", "x", {"mode": "sometimes"})])
    assert v.verdict == "error" and "mode" in v.detail["error"]
    with pytest.raises(ValueError):
        RefusalJudge("sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    " " * 8_000_000 + "I'm sorry",  # strip() walks the whole run, in C
    "I'm sorry " * 800_000,  # only the opening's 300 characters meet the regex
    "I " * 4_000_000,
    "\n" * 8_000_000,
])
def test_cost_per_item_is_bounded_whatever_the_length(text):
    """The judge runs in the serving process: an 8 MB response must cost milliseconds (module doc)."""
    judge = RefusalJudge()
    start = time.perf_counter()
    judge.judge([Sample("p", text)], deadline=time.time() + 1)
    assert time.perf_counter() - start < 0.05
