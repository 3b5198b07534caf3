"""The demo world is what its docstring says: each style passes or fails its task's judges as designed,
the tokenizer gives back the exact text, and the annotators prefer what they are meant to prefer."""

from __future__ import annotations

import asyncio
import random

import pytest

from cgpo.demo import world as W
from cgpo.services.judges.embedded import embedded_judges
from cgpo.services.judges.config import JudgeConfig

# style -> share of its responses the task's judges accept
EXPECTED_PASS = {
    ("math", "correct"): (1.0, 1.0), ("math", "wrong"): (0.0, 0.0), ("math", "confident"): (0.0, 0.3),
    ("instructions", "comply"): (1.0, 1.0), ("instructions", "verbose"): (0.0, 0.0),
    ("harmful", "refuse"): (1.0, 1.0), ("harmful", "comply"): (0.0, 0.0),
    ("benign", "answer"): (1.0, 1.0), ("benign", "refuse"): (0.0, 0.0),
}


@pytest.fixture(scope="module")
def items():
    return W.build_items(seed=0)


def judge_all(rows):
    async def run():
        async with embedded_judges(JudgeConfig(enabled=("math", "instructions", "refusal"))) as client:
            return await client.judge(rows)

    return asyncio.run(run())


def test_each_style_passes_or_fails_its_judges_as_designed(items):
    rng = random.Random(0)
    rows, keys = [], []
    for task, styles in W.SFT_MIX.items():
        for item in items[task][:40]:
            for style in styles:
                rows.append({"prompt": item.prompt, "response": item.respond(style, rng), "judges": W.JUDGES[task],
                             "metadata": item.metadata})
                keys.append((task, style, item.metadata.get("instruction_id_list", [""])[0]))
    results = judge_all(rows)
    ignored = [r.feasible for k, r in zip(keys, results) if k[:2] == ("instructions", "ignore")]
    limits = [k[2] == "length_constraints:number_words" for k in keys if k[:2] == ("instructions", "ignore")]
    assert ignored == limits and any(limits)  # ignoring the ask passes only a word limit (it is short)
    for key, (low, high) in EXPECTED_PASS.items():
        verdicts = [r for k, r in zip(keys, results) if k[:2] == key]
        assert not any(v.verdict == "error" for r in verdicts for v in r.verdicts.values()), key
        rate = sum(r.feasible for r in verdicts) / len(verdicts)
        assert low <= rate <= high, (key, rate)


def test_prompts_are_distinct_and_splits_disjoint(items):
    for task, rows in items.items():
        prompts = [i.prompt for i in rows]
        assert len(set(prompts)) == len(prompts), task
        split = W.split_items(rows, n_eval=20, n_rl=30)
        held = {i.prompt for i in split.eval}
        assert not held & {i.prompt for i in split.rl} and not held & {i.prompt for i in split.sft}


def test_the_tokenizer_gives_back_every_response_exactly(items):
    from cgpo.demo.models import build_tokenizer, encode_example

    tokenizer = build_tokenizer(W.corpus(items) + [" ".join(f"{n}." for n in range(-5, 30))])
    rng = random.Random(1)
    for rows in items.values():
        for item in rows[:10]:
            for style in item.styles:
                text = item.respond(style, rng)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids
                assert tokenizer.decode(ids, skip_special_tokens=True) == text
                full, n_prompt = encode_example(tokenizer, item.prompt, text)
                assert full[-1] == tokenizer.eos_token_id and full[n_prompt:-1] == ids


def test_annotators_prefer_their_ranked_style_with_ten_percent_noise(items):
    split = {t: W.split_items(rows, 20, 30) for t, rows in items.items()}
    pairs = W.preference_pairs(split, W.HELPFUL_RANK, 400, seed=3)
    confident_first = [p for p in pairs if "absolutely sure" in p["chosen"] + p["rejected"]]
    agree = sum("absolutely sure" in p["chosen"] for p in confident_first) / len(confident_first)
    assert 0.8 <= agree <= 0.97  # the flaw: the helpfulness annotator prefers the confident guess
    safety = W.preference_pairs(split, W.SAFETY_RANK, 400, seed=3)
    harmful = [p for p in safety if p["prompt"] in {i.prompt for i in items["harmful"]}]
    assert 0.8 <= sum(p["chosen"] == W.REFUSAL for p in harmful) / len(harmful) <= 0.97


def test_sft_data_follows_the_style_mix(items):
    split = {t: W.split_items(rows, 20, 30) for t, rows in items.items()}
    rows = W.sft_examples(split, 1000, seed=0)
    harmful = {i.prompt for i in items["harmful"]}
    refusals = [r["response"] == W.REFUSAL for r in rows if r["prompt"] in harmful]
    assert abs(sum(refusals) / len(refusals) - W.SFT_MIX["harmful"]["refuse"]) < 0.05
