"""End to end on a tiny world: CGPO raises an easy judge's pass rate; an interrupted run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny_models import build_model, build_tokenizer, save_tiny_model
from trainer.config import load_config
from trainer.loop import train

LOWERCASE = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A random tiny policy, a random tiny RM, and prompts whose judge wants an all-lowercase answer."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    tok = build_tokenizer()
    save_tiny_model(root / "policy", tokenizer=tok,
                    model=build_model(tok, hidden_size=64, num_heads=2, initializer_range=0.2))
    save_tiny_model(root / "rm", tokenizer=tok,
                    model=build_model(tok, kind="sequence-classification", hidden_size=64, num_heads=2))
    for name, topics in (("prompts", ["the sea", "a bicycle", "Rome", "bread", "a poem", "the moon", "math",
                                      "elections"]), ("eval", ["a cat", "music", "rain", "trees"])):
        lines = [json.dumps({"prompt": f"Write about {t} in lowercase.", "metadata": LOWERCASE}) for t in topics]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_config(world: Path, out: str, optimizer: str = "crpg", lr: float = 3e-3, **extra: object) -> Path:
    lines = "\n".join(f"{k}: {v}" for k, v in extra.items())
    path = world / f"{out}.yaml"
    path.write_text(f"""
policy: {world}/policy
steps: 15
output_dir: {world}/{out}
generation: {{max_new_tokens: 8}}
optim: {{lr: {lr}, micro_batch_size: 16}}
{lines}
tasks:
  - name: lower
    prompts: {world}/prompts.jsonl
    eval_prompts: {world}/eval.jsonl
    reward_model: {{embedded: {world}/rm}}
    judges: [instructions]
    optimizer: {optimizer}
    k: 8
    batch_size: 4
    kl_max: 100
""")
    return path


@pytest.mark.parametrize("optimizer, lr", [("crpg", 3e-3), ("crraft", 1e-2)])
def test_the_judge_pass_rate_rises_on_an_easy_task(world, optimizer, lr):
    # CRRAFT trains on one weighted sample per prompt, CRPG on all K: it takes a larger step size
    records = train(load_config(write_config(world, f"run-{optimizer}", optimizer, lr)), resume=False,
                    log=lambda _: None)
    rates = [r["lower/judge/instructions/pass_rate"] for r in records]
    first, last = sum(rates[:3]) / 3, sum(rates[-3:]) / 3
    assert last > first + 0.2, rates
    final = records[-1]
    assert {"eval/lower/pass_rate", "eval/lower/kl", "time/generate_s", "time/score_s", "lower/kl"} <= set(final)
    assert (world / f"run-{optimizer}" / "checkpoint" / "trainer_state.pt").exists()
    assert len((world / f"run-{optimizer}" / "metrics.jsonl").read_text().splitlines()) == 15


def test_an_interrupted_run_resumes_with_identical_metrics(world):
    full = train(load_config(write_config(world, "full", steps=6, eval_every=3)), resume=False,
                 log=lambda _: None)
    config = write_config(world, "resumed", steps=6, eval_every=3)
    first = train(load_config(config, ["steps=3"]), resume=False, log=lambda _: None)
    rest = train(load_config(config), resume=True, log=lambda _: None)
    resumed = first + rest
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-5, abs=1e-6)


def test_the_vllm_engine_without_vllm_is_a_clear_error_not_a_fallback(world):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    config = load_config(write_config(world, "vllm-engine"), ["generation.engine=vllm"])
    with pytest.raises(RuntimeError, match="needs vLLM installed"):
        train(config, resume=False, log=lambda _: None)


def test_eval_reports_ifevals_accuracies_greedy_and_kl_only_for_a_trained_policy(world):
    from trainer.loop import eval_checkpoint

    overrides = ["generation.eval_temperature=0", "generation.eval_max_new_tokens=6"]
    config = write_config(world, "evaluated", steps=2)
    records = train(load_config(config, overrides), resume=False, log=lambda _: None)
    before = eval_checkpoint(load_config(config, overrides))
    assert before["eval/lower/kl"] == 0.0  # the initial policy is π_ref
    assert set(before) >= {f"eval/lower/ifeval/{m}" for m in
                           ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")}
    # one instruction per prompt: prompt- and instruction-level agree, and strict equals the judge's rate
    assert before["eval/lower/ifeval/prompt_strict"] == before["eval/lower/ifeval/instruction_strict"]
    assert before["eval/lower/ifeval/prompt_strict"] == before["eval/lower/pass_rate"]
    assert before["eval/lower/ifeval/prompt_loose"] >= before["eval/lower/ifeval/prompt_strict"]
    checkpoint = world / "evaluated" / "checkpoint"
    after = eval_checkpoint(load_config(config, overrides), checkpoint)
    assert after["eval/lower/kl"] != 0.0
    # greedy: evaluating again writes the same responses, and the in-training final eval agrees
    again = eval_checkpoint(load_config(config, overrides), checkpoint)
    assert after == again
    assert after["eval/lower/pass_rate"] == records[-1]["eval/lower/pass_rate"]
    samples = (world / "evaluated" / "eval_samples" / "initial.jsonl").read_text().splitlines()
    assert [json.loads(s)["prompt"] for s in samples] == [f"Write about {t} in lowercase." for t in
                                                          ("a cat", "music", "rain", "trees")]
