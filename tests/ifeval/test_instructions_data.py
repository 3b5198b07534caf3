"""The generated IFEval-style training prompts, IFEval's file as an eval set, RM pairs, the four accuracies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cgpo.instructions import (BY_ID, CONFLICTS, KINDS, convert_ifeval, generate_prompts, preference_pairs,
                               write_jsonl)
from cgpo.services.judges.embedded import embedded_judges
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.instructions.catalog import parse
from cgpo.trainer.data import load_prompts
from cgpo.trainer.ifeval import accuracies

IFEVAL = Path(__file__).resolve().parents[2] / "data" / "ifeval"
INPUT, RESPONSES = IFEVAL / "input_data.jsonl", IFEVAL / "input_response_data_gpt4_20231107_145030.jsonl"


def test_generated_prompts_are_valid_varied_and_reproducible():
    rows = generate_prompts(1500, seed=3)
    assert rows == generate_prompts(1500, seed=3)
    assert rows != generate_prompts(1500, seed=4)
    assert len({r["prompt"] for r in rows}) == 1500
    counts = {i: 0 for i in BY_ID}
    sizes = {1: 0, 2: 0, 3: 0}
    for row in rows:
        ids = row["metadata"]["instruction_id_list"]
        parse(row["metadata"])  # the judge accepts every id and kwarg
        sizes[len(ids)] += 1
        assert len(set(ids)) == len(ids)
        for a in ids:
            counts[a] += 1
            assert not CONFLICTS[a] & set(ids), (a, ids)
    assert all(counts[k.id] > 0 for k in KINDS), counts  # all 25 types occur
    assert min(sizes.values()) > 300  # 1, 2 and 3 instructions per prompt, about evenly


def test_repeat_prompt_asks_for_exactly_the_text_before_the_instruction():
    rows = [r for r in generate_prompts(600, seed=0)
            if "combination:repeat_prompt" in r["metadata"]["instruction_id_list"]]
    assert rows
    for row in rows:
        ids = row["metadata"]["instruction_id_list"]
        target = row["metadata"]["kwargs"][ids.index("combination:repeat_prompt")]["prompt_to_repeat"]
        assert row["prompt"].startswith(target + " First repeat the request word for word")


def test_generation_refuses_bad_arguments():
    with pytest.raises(ValueError):
        generate_prompts(0)
    with pytest.raises(ValueError, match="unknown instruction ids"):
        generate_prompts(5, exclude=["punctuation:nope"])
    rows = generate_prompts(200, exclude=["punctuation:no_comma"])
    assert not any("punctuation:no_comma" in r["metadata"]["instruction_id_list"] for r in rows)


def test_training_prompts_never_include_ifevals_own():
    ifeval = {json.loads(line)["prompt"] for line in INPUT.read_text().splitlines()}
    generated = {r["prompt"] for r in generate_prompts(2000, seed=0)}
    assert not generated & ifeval


def test_converted_ifeval_loads_as_a_prompt_file_with_gpt4_baselines(tmp_path):
    rows = convert_ifeval(INPUT, RESPONSES)
    assert len(rows) == 541
    write_jsonl(tmp_path / "ifeval.jsonl", rows)
    prompts = load_prompts(tmp_path / "ifeval.jsonl")
    assert len(prompts) == 541 and all(p.baseline for p in prompts)
    for p in prompts:
        parse(p.metadata)
    assert all(v is not None for p in prompts for kw in p.metadata["kwargs"] for v in kw.values())


def test_pairs_prefer_the_sample_following_more_instructions():
    prompts = [{"prompt": "p1"}, {"prompt": "p2"}]
    pairs = preference_pairs(prompts, [["a", "b", "c"], ["x", "y"]], [[1.0, 0.5, 1.0], [0.5, 0.5]])
    assert pairs == [{"prompt": "p1", "chosen": "a", "rejected": "b"},
                     {"prompt": "p1", "chosen": "c", "rejected": "b"}]


def test_accuracies_reproduce_ifevals_figures_for_the_gpt4_responses(tmp_path):
    write_jsonl(tmp_path / "ifeval.jsonl", convert_ifeval(INPUT))
    prompts = load_prompts(tmp_path / "ifeval.jsonl")
    by_prompt = {json.loads(line)["prompt"]: json.loads(line)["response"]
                 for line in RESPONSES.read_text().splitlines()}

    async def run() -> dict[str, float]:
        async with embedded_judges(JudgeConfig.from_env(enabled=("instructions",))) as client:
            return await accuracies(client, prompts, [by_prompt[p.text] for p in prompts])

    got = asyncio.run(run())
    # the instructions judge's own reproduction of IFEval's reference evaluation (tests/judges)
    assert got == pytest.approx({"prompt_strict": 0.7708, "instruction_strict": 0.8369,
                                 "prompt_loose": 0.7967, "instruction_loose": 0.8561}, abs=5e-5)


@pytest.mark.slow
def test_sampled_pairs_prefer_the_sample_the_judge_rates_higher(tmp_path):
    from cgpo.instructions import sample_preference_pairs
    from cgpo.services.judges.instructions.judge import follows
    from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

    tok = build_tokenizer()
    policy = save_tiny_model(tmp_path / "policy", tokenizer=tok,
                             model=build_model(tok, hidden_size=64, num_heads=2, initializer_range=0.2))
    rows = generate_prompts(16, seed=1, exclude=["language:response_language"])
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    pairs = sample_preference_pairs(str(policy), tmp_path / "prompts.jsonl", k=4, temperature=5.0,
                                    max_new_tokens=24, precision="bf16", batch_prompts=8, log=lambda _: None)
    by_prompt = {r["prompt"]: r["metadata"] for r in rows}
    assert pairs  # hot random samples differ in what they follow (commas, letters, length...)
    for pair in pairs:
        instructions, strict = parse(by_prompt[pair["prompt"]])
        share = {side: sum(follows(pair[side], instructions, strict)) for side in ("chosen", "rejected")}
        assert share["chosen"] > share["rejected"], pair
