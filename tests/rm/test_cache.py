"""The baseline-reward cache is keyed by the reward model's weights, not its name and path; conversations
(multi-turn prompts) are scored with the chat template over every turn and cached under their turns."""

from __future__ import annotations

import logging

import pytest

from cgpo.services.common.schemas import RMItem
from cgpo.services.rm.calibration import MemoryCache, RedisCache
from cgpo.services.rm.handler import RMHandler
from cgpo.services.rm.model import RewardModel
from tests.rm.conftest import tiny_rm

PROMPT = "What is the capital of France?"
BASELINE = "The capital of France is Paris."
TURNS = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi."},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": PROMPT}]


def handler(path, cache, **kwargs) -> RMHandler:
    h = RMHandler({"helpful": RewardModel("helpful", str(path), **kwargs)}, cache)
    h.setup()
    return h


def direct(path, prompt: str, response: str, messages=None) -> float:
    model = RewardModel("x", str(path))
    model.load()
    return model.score([model.encode(prompt, response, messages).ids])[0]


def item(response: str = "Paris.", messages=None) -> RMItem:
    return RMItem(model="helpful", prompt=PROMPT, response=response, baseline=BASELINE, messages=messages)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_reward_model_retrained_at_the_same_path_never_gets_the_old_baseline_scores(tmp_path, kind, request):
    cache = (MemoryCache() if kind == "memory"
             else RedisCache(request.getfixturevalue("redis_url"), "cgpo:rm:baseline:", ttl_s=60))
    path = tiny_rm(tmp_path / "rm", seed=0)
    first = handler(path, cache)
    old = first.predict([item()])[0]
    assert old.baseline_reward == pytest.approx(direct(path, PROMPT, BASELINE), abs=1e-5)

    again = handler(path, cache)  # the same weights: the cached score is reused, not recomputed
    assert again.predict([item()])[0].baseline_reward == old.baseline_reward
    assert again.models["helpful"].sequences_scored == 1  # the response only

    tiny_rm(path, seed=5)  # retrained in place: same name, same path, other weights
    retrained = handler(path, cache)
    assert retrained.models["helpful"].fingerprint != first.models["helpful"].fingerprint
    new = retrained.predict([item()])[0]
    assert new.baseline_reward == pytest.approx(direct(path, PROMPT, BASELINE), abs=1e-5)
    assert new.baseline_reward != pytest.approx(old.baseline_reward, abs=1e-4)


def test_the_fingerprint_follows_what_changes_a_score(tmp_path, rm_path):
    prints = {}
    for name, kwargs in (("a", {}), ("b", {}), ("short", {"max_length": 16}), ("bf16", {"dtype": "bfloat16"})):
        model = RewardModel("helpful", str(rm_path), **kwargs)
        model.load()
        prints[name] = model.fingerprint
    assert prints["a"] == prints["b"]  # loading the same files twice
    assert len({prints["a"], prints["short"], prints["bf16"]}) == 3  # truncation and precision change scores


def test_the_log_says_whether_baseline_rewards_came_from_the_cache(rm_path, caplog):
    cache = MemoryCache()
    with caplog.at_level(logging.INFO, logger="cgpo.rm"):
        handler(rm_path, cache).predict([item()])
        handler(rm_path, cache).predict([item()])
    lines = [r.getMessage() for r in caplog.records if r.name == "cgpo.rm"]
    assert "no cached baseline rewards yet" in lines[0] and "reusing cached baseline rewards" in lines[1]
    assert all("weights fingerprint" in line for line in lines)


def test_a_conversation_is_scored_over_all_its_turns_and_cached_under_them(rm_path):
    model = RewardModel("helpful", str(rm_path))
    model.load()
    text = model.tokenizer.decode(list(model.encode(PROMPT, "Paris.", TURNS).ids))
    assert all(turn["content"] in text for turn in TURNS)
    h = handler(rm_path, MemoryCache())
    other_turns = [{"role": "user", "content": "Be verbose."}, *TURNS[1:]]
    alone, chat, other = h.predict([item(), item(messages=TURNS), item(messages=other_turns)])
    assert chat.reward == pytest.approx(direct(rm_path, PROMPT, "Paris.", TURNS), abs=1e-5)
    assert chat.baseline_reward == pytest.approx(direct(rm_path, PROMPT, BASELINE, TURNS), abs=1e-5)
    # the same last user turn and baseline, other earlier turns: other inputs, other cache entries
    assert len({alone.baseline_reward, chat.baseline_reward, other.baseline_reward}) == 3
