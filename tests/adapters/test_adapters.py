"""The adapters called as TRL, verl and OpenRLHF call reward functions, with the judges embedded: what each
returns for feasible, infeasible, undecidable and inapplicable rows, in one request per batch."""

from __future__ import annotations

import asyncio
import json

import pytest

from cgpo.adapters import Judging
from cgpo.adapters.trl import judge_reward, judge_rewards

RIGHT, WRONG = "The final answer is 4.", "The final answer is 5."
LOWER = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{"num_words": None}]}


@pytest.fixture
def requests(monkeypatch):
    """The number of judge requests the adapters send."""
    sent = []
    original = Judging._judge

    async def counted(self, prompts, responses, metadata):
        sent.append(sum(self.applies(m) for m in metadata))
        return await original(self, prompts, responses, metadata)

    monkeypatch.setattr(Judging, "_judge", counted)
    return sent


def test_a_trl_reward_function_maps_verdicts_and_logs_per_judge(requests):
    metrics, extra = {}, {}
    reward = judge_reward(["math"], values={"pass": 1.0, "fail": -1.0})
    out = reward(prompts=["2+2?", "2+2?", "Say hi.", [{"role": "user", "content": "2+2?"}]],
                 completions=[RIGHT, WRONG, "hi", [{"role": "assistant", "content": RIGHT}]],
                 answer=["4", "4", None, "4"], completion_ids=[[1]] * 4, trainer_state=None,
                 log_metric=lambda k, v: metrics.__setitem__(k, v),
                 log_extra=lambda k, v: extra.__setitem__(k, v))
    assert out == [1.0, -1.0, None, 1.0]  # no answer: the judge does not apply, None (TRL skips the row)
    assert requests == [3]  # one request, for the three rows it applies to
    assert reward.__name__ == "cgpo_math"
    assert metrics == {"cgpo_math/applicable": 0.75, "cgpo_math/math/pass_rate": pytest.approx(2 / 3),
                       "cgpo_math/math/error_rate": 0.0}
    assert extra["cgpo_math/math"][2] == "n/a" and extra["cgpo_math/math"][1].startswith("fail extracted=5")


def test_a_mixture_is_feasible_when_every_judge_passes_and_async_gives_the_same(requests):
    both = judge_reward(["math", "instructions"], asynchronous=True, name="both")
    rows = {"prompts": ["2+2? lowercase."] * 3, "completions": [RIGHT.lower(), RIGHT, WRONG.lower()],
            "answer": ["4"] * 3, "instruction_id_list": [LOWER["instruction_id_list"]] * 3,
            "kwargs": [LOWER["kwargs"]] * 3}
    assert asyncio.iscoroutinefunction(both)
    assert asyncio.run(both(**rows)) == [1.0, 0.0, 0.0]
    separate = judge_rewards(["math", "instructions"])
    assert [f(**rows) for f in separate] == [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert [f.__name__ for f in separate] == ["cgpo_math", "cgpo_instructions"]


def test_a_judge_error_maps_to_the_error_value():
    reward = judge_reward("math", values={"error": -5.0})
    assert reward(prompts=["q"], completions=[RIGHT], answer=[["not", "a", "number"]]) == [-5.0]
    with pytest.raises(ValueError, match="unknown keys"):
        judge_reward("math", values={"passed": 1.0})


def test_verl_calls_as_its_naive_and_batch_managers_do(requests, monkeypatch):
    from cgpo.adapters.verl import compute_score, compute_score_batch

    monkeypatch.setenv("CGPO_ADAPTER_JUDGES", "math")
    one = compute_score(data_source="gsm8k", solution_str="so\n#### 72", ground_truth="72", extra_info=None)
    assert one == {"score": 1.0, "applicable": 1.0, "judge_error": 0.0, "math_pass": 1.0}
    batch = compute_score_batch(data_sources=["gsm8k", "gsm8k", "ifeval"], solution_strs=[RIGHT, WRONG, "all lower"],
                                ground_truths=["4", "4", None],
                                extra_infos=[{"index": 0}, None, {"judges": ["instructions"], "metadata": LOWER}])
    assert [b["score"] for b in batch] == [1.0, 0.0, 1.0] and batch[2]["instructions_pass"] == 1.0
    assert requests == [1, 2, 1]  # the naive call, then one request per set of judges in the batch


def test_openrlhf_calls_its_reward_function_file_with_queries_prompts_and_labels(requests, monkeypatch):
    import importlib.util

    import cgpo.adapters.openrlhf as module

    spec = importlib.util.spec_from_file_location("reward_func_module", module.__file__)  # as OpenRLHF loads it
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    monkeypatch.setenv("CGPO_ADAPTER_JUDGES", "math")
    prompt = "<s><|user|>\n2+2?</s>\n<|assistant|>\n"
    labels = ["4", json.dumps({"answer": "4"}), json.dumps({"judges": ["math"], "metadata": {}})]
    out = loaded.reward_func(queries=[prompt + RIGHT + "</s>", prompt + WRONG + "</s><pad><pad>", prompt + "x"],
                             prompts=[prompt] * 3, labels=labels)
    assert out["rewards"].tolist() == [1.0, 0.0, 0.0] and out["scores"].tolist() == [1.0, 0.0, 0.0]
    assert out["extra_logs"]["applicable"].item() == pytest.approx(2 / 3)
    assert out["extra_logs"]["math_pass"].item() == pytest.approx(1 / 3)
    assert requests == [2]
