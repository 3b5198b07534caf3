import asyncio
import math

import pytest

from cgpo.trainer.config import ServiceRef, TaskConfig
from cgpo.trainer.data import Prompt
from cgpo.trainer.scoring import ScoringError, ScoringWork, Services, score_tasks
from tests.rm.conftest import tiny_rm


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return str(tiny_rm(tmp_path_factory.mktemp("rm")))


def test_all_tasks_are_scored_concurrently_with_verdicts_and_calibrated_rewards(rm_dir):
    math_task = TaskConfig(name="math", prompts="-", reward_model=ServiceRef(embedded=rm_dir), judges=["math"])
    chat_task = TaskConfig(name="chat", prompts="-", reward_model=ServiceRef(embedded=rm_dir), judges=[])
    prompts = [Prompt("a", "What is 2+2?", {"answer": "4"}), Prompt("b", "What is 3+3?", {"answer": "6"})]
    texts = ["The final answer is 4.", "The final answer is 5.", "The final answer is 6.", "six"]
    index = [0, 0, 1, 1]
    baselines = ["4", "6"]

    async def scenario():
        async with Services([math_task, chat_task]) as services:
            return await score_tasks(services, {
                "math": ScoringWork(math_task, prompts, texts, index, baselines),
                "chat": ScoringWork(chat_task, prompts[:1], ["Hello!"], [0], ["Hi."]),
            })

    out = asyncio.run(scenario())
    scores = out["math"]
    assert scores.feasible == [True, False, True, False]
    assert scores.judge_rates() == {"math": {"pass_rate": 0.5, "error_rate": 0.0}}
    for r, b, c in zip(scores.reward, scores.baseline_reward, scores.calibrated):
        assert c == pytest.approx(1 / (1 + math.exp(-(r - b))))
    assert scores.baseline_reward[0] == scores.baseline_reward[1] != scores.baseline_reward[2]
    assert out["chat"].feasible == [True] and out["chat"].verdicts == [{}]


def test_an_unreachable_service_stops_scoring_with_a_clear_error(rm_dir):
    task = TaskConfig(name="math", prompts="-", reward_model=ServiceRef(url="http://127.0.0.1:9", model="m"),
                      judges=["math"])

    async def scenario():
        async with Services([task]) as services:
            services.reward_model(task)[0].max_retries = 1
            return await score_tasks(services, {"math": ScoringWork(task, [Prompt("a", "q", {"answer": "1"})], ["x"],
                                                                    [0], ["1"])})

    with pytest.raises(ScoringError, match="math.*ServiceUnavailableError"):
        asyncio.run(scenario())


def test_an_item_the_reward_model_could_not_score_stops_scoring_with_a_clear_error(rm_dir):
    from cgpo.services.common.errors import ServiceError
    from cgpo.services.common.schemas import ScoreResult

    task = TaskConfig(name="chat", prompts="-", reward_model=ServiceRef(embedded=rm_dir), judges=[])

    class NotServed(ServiceError):
        status, code = 404, "unknown_model"

    async def scenario():
        async with Services([task]) as services:
            client = services.reward_model(task)[0]
            real = client.score

            async def one_unscored(model, items):
                results = await real(model, items)
                return [results[0], ScoreResult.unscored(NotServed("no model 'x'")), *results[2:]]

            client.score = one_unscored
            return await score_tasks(services, {"chat": ScoringWork(task, [Prompt("a", "q")], ["x", "y", "z"],
                                                                    [0, 0, 0], ["b"])})

    with pytest.raises(ScoringError, match="chat.*could not score an item: unknown_model: no model 'x'"):
        asyncio.run(scenario())


def test_a_large_batch_reaches_the_reward_model_in_bounded_requests_in_order(rm_dir):
    from cgpo.trainer import scoring

    task = TaskConfig(name="chat", prompts="-", reward_model=ServiceRef(embedded=rm_dir), judges=[])
    prompts = [Prompt(str(i), f"Question {i}?") for i in range(scoring.RM_CHUNK * 2 + 3)]
    texts = [f"Answer number {i}." for i in range(len(prompts))]
    sizes = []

    async def scenario():
        async with Services([task]) as services:
            client = services.reward_model(task)[0]
            score = client.score

            async def counted(model, items, **kwargs):
                sizes.append(len(items))
                return await score(model, items, **kwargs)

            client.score = counted
            whole = await score_tasks(services, {"chat": ScoringWork(task, prompts, texts, list(range(len(prompts))),
                                                          ["Fine."] * len(prompts))})
            one_by_one = [await score(services.reward_model(task)[1], [
                {"prompt": p.text, "response": t, "baseline": "Fine."}]) for p, t in zip(prompts[:3], texts[:3])]
            return whole["chat"], one_by_one

    whole, one_by_one = asyncio.run(scenario())
    assert sizes == [scoring.RM_CHUNK, scoring.RM_CHUNK, 3]
    assert whole.reward[:3] == pytest.approx([r[0].reward for r in one_by_one], abs=1e-5)  # padding only


def test_a_chat_prompt_reaches_judges_and_reward_model_with_every_turn(rm_dir):
    from cgpo.services.rm.model import RewardModel

    task = TaskConfig(name="math", prompts="-", reward_model=ServiceRef(embedded=rm_dir), judges=["math"])
    turns = (("system", "Answer with the final answer."), ("user", "What is 1+1?"), ("assistant", "2."),
             ("user", "And 2+2?"))
    prompt = Prompt("c", turns, {"answer": "4"})
    seen = []

    async def scenario():
        async with Services([task]) as services:
            client = services.judges(task)
            judge = client.judge

            async def spy(items, **kwargs):
                seen.extend(items)
                return await judge(items, **kwargs)

            client.judge = spy
            work = ScoringWork(task, [prompt], ["The final answer is 4."], [0], ["4."])
            return await score_tasks(services, {"math": work})

    scores = asyncio.run(scenario())["math"]
    assert seen[0]["prompt"] == "And 2+2?"  # the last user turn, as before
    assert seen[0]["metadata"] == {"answer": "4", "messages": [{"role": r, "content": c} for r, c in turns]}
    assert scores.feasible == [True]
    model = RewardModel("x", rm_dir)
    model.load()
    messages = prompt.messages()
    assert scores.reward[0] == pytest.approx(
        model.score([model.encode("And 2+2?", "The final answer is 4.", messages).ids])[0], abs=1e-5)
    assert scores.baseline_reward[0] == pytest.approx(model.score([model.encode("And 2+2?", "4.", messages).ids])[0],
                                                      abs=1e-5)
    assert scores.reward[0] != pytest.approx(model.score([model.encode("And 2+2?", "The final answer is 4.").ids])[0],
                                             abs=1e-4)
