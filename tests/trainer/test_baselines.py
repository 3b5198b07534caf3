"""Baselines ā (docs/method.md §3): kept exactly as π_ref drew them, judged with retries, cached under a fingerprint."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from cgpo.services.common.schemas import JudgeResult, Verdict
from tests.tiny_models import build_tokenizer
from cgpo.trainer import baselines as B
from cgpo.trainer.config import build_config
from cgpo.trainer.data import Prompt
from cgpo.trainer.rollout import Rollouts


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


class Engine:
    """Draws fixed responses; ``finished`` says whether each ends with the EOS it drew."""

    def __init__(self, eos: int, finished: bool = True) -> None:
        self.eos, self.finished, self.calls = eos, finished, 0

    def generate(self, prompt_ids, k, seed, prompt_offset=0):
        self.calls += 1
        n = len(prompt_ids)
        drawn = [[300 + i, 301 + i, 302 + i] + ([self.eos] if self.finished else []) for i in range(n)]
        return Rollouts(list(range(n)), [list(p) for p in prompt_ids], drawn, [f"sample {i}" for i in range(n)],
                        [0.0] * n, [self.finished] * n)


class Judges:
    """Answers every item of its n-th request with ``script[n]`` (the last one once past the script)."""

    def __init__(self, *script: str) -> None:
        self.script, self.requests = script, []

    async def judge(self, items):
        verdict = self.script[min(len(self.requests), len(self.script) - 1)]
        self.requests.append(items)
        return [JudgeResult(feasible=verdict == "pass", verdicts={"instructions": Verdict(verdict=verdict)})
                for _ in items]


class Services:
    def __init__(self, judges: Judges) -> None:
        self._judges = judges

    def judges(self, task):
        return self._judges


def run_config(tmp_path: Path, **task_fields):
    (tmp_path / "ref").mkdir(parents=True, exist_ok=True)
    weights = tmp_path / "ref" / "model.safetensors"
    if not weights.exists():
        weights.write_bytes(b"weights")
    task = {"name": "t", "prompts": "-", "reward_model": {"embedded": "-"}, "judges": ["instructions"], **task_fields}
    return build_config({"policy": str(tmp_path / "ref"), "output_dir": str(tmp_path / "out"), "tasks": [task]})


def prepare(config, prompts, tokenizer, engine, judges, logs=None):
    sources = B.Sources(tokenizer, engine, Services(judges), asyncio.run)
    return B.prepare_baselines(config.tasks[0], prompts, sources, config,
                               log=(logs.append if logs is not None else lambda _: None))


PROMPTS = [Prompt("a", "Write about the sea."), Prompt("b", "Write about rain.")]


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(B, "RETRY_DELAY_S", 0.0)


@pytest.mark.parametrize("finished", [True, False])
def test_a_sampled_baseline_keeps_the_ids_pi_ref_drew_and_no_eos_it_did_not_draw(tmp_path, tokenizer, finished):
    eos = tokenizer.eos_token_id
    config = run_config(tmp_path)
    cache = prepare(config, PROMPTS, tokenizer, Engine(eos, finished), Judges("pass"))
    assert cache["a"].ids == [300, 301, 302] + ([eos] if finished else [])
    assert cache["a"].finished is finished and cache["a"].text == "sample 0"
    for rule, usable in (("keep", True), ("violation", finished), ("mask", finished)):
        task = run_config(tmp_path, on_truncation=rule).tasks[0]
        assert B.baseline_feasible(task, cache["a"]) is usable


def test_a_dataset_baseline_is_a_finished_response(tmp_path, tokenizer):
    config = run_config(tmp_path)
    cache = prepare(config, [Prompt("c", "Say hi.", baseline="Hi there.")], tokenizer, Engine(0), Judges("pass"))
    assert cache["c"].ids == tokenizer("Hi there.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert cache["c"].finished is True


def test_a_judge_error_is_retried_and_never_stored_as_a_fail(tmp_path, tokenizer):
    config = run_config(tmp_path)
    judges = Judges("error", "error", "pass")
    cache = prepare(config, PROMPTS, tokenizer, Engine(2), judges)
    assert len(judges.requests) == 3 and cache["a"].verdicts == {"instructions": "pass"}
    assert B.baseline_feasible(config.tasks[0], cache["a"])

    other = run_config(tmp_path / "other")
    judges = Judges("error")
    logs: list[str] = []
    cache = prepare(other, PROMPTS, tokenizer, Engine(2), judges, logs)
    assert len(judges.requests) == B.JUDGE_ATTEMPTS  # bounded
    stored = json.loads((tmp_path / "other" / "out" / "baselines" / "t.json").read_text())
    assert stored["prompts"]["a"]["verdicts"] == {"instructions": "error"}  # the verdict, not a fail
    assert not B.baseline_feasible(other.tasks[0], cache["a"])  # unknown: no fallback for CRRAFT
    assert B.rates(other.tasks[0], list(cache.values())) == {"feasible_rate": 0.0, "error_rate": 1.0,
                                                            "truncated_rate": 0.0}
    assert "feasible 0%, judge errors 100%" in logs[-1]
    # the next run asks again, and the judge now answers
    judges = Judges("pass")
    cache = prepare(other, PROMPTS, tokenizer, Engine(2), judges, logs)
    assert len(judges.requests) == 1 and cache["b"].verdicts == {"instructions": "pass"}
    assert "feasible 100%, judge errors 0%" in logs[-1]


def test_the_cache_is_reused_only_while_what_determines_it_is_unchanged(tmp_path, tokenizer):
    config = run_config(tmp_path)
    engine, judges, logs = Engine(2), Judges("pass"), []
    prepare(config, PROMPTS, tokenizer, engine, judges, logs)
    assert (engine.calls, len(judges.requests)) == (1, 1) and " built;" in logs[-1]

    prepare(config, PROMPTS, tokenizer, engine, judges, logs)  # nothing changed
    assert (engine.calls, len(judges.requests)) == (1, 1) and " reused;" in logs[-1]

    hotter = run_config(tmp_path)
    hotter.generation.temperature = 0.7
    prepare(hotter, PROMPTS, tokenizer, engine, judges, logs)  # other sampling settings: drawn again
    assert (engine.calls, len(judges.requests)) == (2, 2) and "rebuilt (temperature changed)" in logs[-1]

    weights = tmp_path / "ref" / "model.safetensors"  # the reference retrained in place
    weights.write_bytes(b"new weights")
    os.utime(weights, ns=(1, 1))
    prepare(hotter, PROMPTS, tokenizer, engine, judges, logs)
    assert (engine.calls, len(judges.requests)) == (3, 3) and "rebuilt (reference_files changed)" in logs[-1]

    judged_twice = run_config(tmp_path, judges=["instructions", "refusal"])
    judged_twice.generation.temperature = 0.7
    prepare(judged_twice, PROMPTS, tokenizer, engine, judges, logs)  # other judges: same responses, judged again
    assert (engine.calls, len(judges.requests)) == (3, 4) and "judged again" in logs[-1]

    edited = [PROMPTS[0], Prompt("b2", "Write about rain.", {"instruction_id_list": []})]  # new metadata, new id
    prepare(judged_twice, edited, tokenizer, engine, judges, logs)
    assert (engine.calls, len(judges.requests)) == (4, 5) and len(judges.requests[-1]) == 1
    assert "1 new" in logs[-1]

    path = tmp_path / "out" / "baselines" / "t.json"
    path.write_text(json.dumps({"a": {"text": "old", "ids": [1], "feasible": False}}))  # an older version's file
    prepare(judged_twice, PROMPTS, tokenizer, engine, judges, logs)
    assert engine.calls == 5 and "older version" in logs[-1]


def test_other_ranks_read_exactly_what_rank_0_stored(tmp_path, tokenizer):
    config = run_config(tmp_path)
    cache = prepare(config, PROMPTS, tokenizer, Engine(2), Judges("error"))
    assert B.load_baselines(config.tasks[0], PROMPTS, config) == cache  # errors included: every rank agrees
    with pytest.raises(RuntimeError, match="rank 0 prepares them first"):
        B.load_baselines(config.tasks[0], [*PROMPTS, Prompt("z", "A prompt rank 0 did not see.")], config)



def test_a_chat_prompts_baseline_is_judged_with_every_turn(tmp_path, tokenizer):
    judges = Judges("pass")
    chat = Prompt("d", (("system", "Be brief."), ("user", "Hi."), ("assistant", "Hello."), ("user", "Bye?")),
                  {"answer": "x"})
    prepare(run_config(tmp_path), [chat], tokenizer, Engine(2), judges)
    item = judges.requests[0][0]
    assert item["prompt"] == "Bye?" and item["metadata"]["answer"] == "x"
    assert [m["content"] for m in item["metadata"]["messages"]] == ["Be brief.", "Hi.", "Hello.", "Bye?"]
