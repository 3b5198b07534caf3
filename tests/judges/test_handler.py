from collections.abc import Sequence

from cgpo.services.common.schemas import JudgeItem, Verdict
from cgpo.services.judges.base import Judge, Sample, failed, passed
from cgpo.services.judges.handler import JudgeHandler


class LengthJudge(Judge):
    name = "short"
    description = "passes responses under 10 characters"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.deadlines: list[float | None] = []

    def judge(self, samples: Sequence[Sample], *, deadline: float | None = None) -> list[Verdict]:
        self.calls.append(len(samples))
        self.deadlines.append(deadline)
        return [passed() if len(s.response) < 10 else failed(length=len(s.response)) for s in samples]


class CrashingJudge(Judge):
    name = "crash"
    description = "always raises"

    def judge(self, samples, *, deadline=None):
        raise RuntimeError("boom")


class ShortJudge(Judge):
    name = "wrong_count"
    description = "returns too few verdicts"

    def judge(self, samples, *, deadline=None):
        return []


def items(*specs):
    return [JudgeItem(prompt="p", response=r, judges=list(j)) for r, j in specs]


def test_each_judge_sees_its_samples_once_per_batch_and_results_keep_order():
    short = LengthJudge()
    handler = JudgeHandler({"short": short})
    out = handler.predict(items(("ok", ["short"]), ("far too long", ["short"]), ("fine", ["short"])))
    assert short.calls == [3]
    assert [r.feasible for r in out] == [True, False, True]
    assert out[1].verdicts["short"].detail == {"length": 12}


def test_feasible_needs_every_judge_to_pass_and_errors_are_not_passes():
    handler = JudgeHandler({"short": LengthJudge(), "crash": CrashingJudge(), "wrong_count": ShortJudge()})
    out = handler.predict(items(("ok", ["short"]), ("ok", ["short", "crash"]), ("ok", ["wrong_count"])))
    assert out[0].feasible is True
    assert out[1].feasible is False
    assert out[1].verdicts["short"].verdict == "pass"
    assert out[1].verdicts["crash"].verdict == "error" and "boom" in out[1].verdicts["crash"].detail["error"]
    assert out[2].verdicts["wrong_count"].verdict == "error"


def test_a_judge_this_worker_does_not_serve_answers_error():
    out = JudgeHandler({"short": LengthJudge()}).predict(items(("ok", ["math"])))
    assert out[0].verdicts["math"].verdict == "error" and out[0].feasible is False


def test_duplicate_judge_names_are_judged_once():
    short = LengthJudge()
    out = JudgeHandler({"short": short}).predict(items(("ok", ["short", "short"])))
    assert short.calls == [1] and list(out[0].verdicts) == ["short"]


def test_every_judge_gets_the_batch_deadline():
    first, second = LengthJudge(), LengthJudge()
    handler = JudgeHandler({"short": first, "other": second})
    handler.predict(items(("ok", ["short", "other"]), ("ok", ["other"])), deadline=1234.5)
    assert first.deadlines == [1234.5] and second.deadlines == [1234.5]
    handler.predict(items(("ok", ["short"])))
    assert first.deadlines == [1234.5, None]
