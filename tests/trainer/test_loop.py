"""End to end on a tiny world: CGPO raises an easy judge's pass rate; an interrupted run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_models import build_model, build_tokenizer, save_tiny_model
from tests.worlds import LOWERCASE, write_config
from cgpo.trainer.config import load_config
from cgpo.trainer.loop import train



@pytest.mark.parametrize("optimizer, lr", [("crpg", 3e-3), ("crraft", 1e-2)])
def test_the_judge_pass_rate_rises_on_an_easy_task(world, optimizer, lr):
    # CRRAFT trains on one weighted sample per prompt, CRPG on all K: it takes a larger step size
    records = train(load_config(write_config(world, f"run-{optimizer}", optimizer, lr)), resume=False,
                    log=lambda _: None)
    assert records[0]["step"] == 0 and "eval/lower/pass_rate" in records[0]  # the initial policy, evaluated
    rates = [r["lower/judge/instructions/pass_rate"] for r in records[1:]]
    first, last = sum(rates[:3]) / 3, sum(rates[-3:]) / 3
    assert last > first + 0.2, rates
    final = records[-1]
    assert {"eval/lower/pass_rate", "eval/lower/kl", "time/generate_s", "time/score_s", "lower/kl",
            "lower/truncated_rate", "lower/baseline/feasible_rate", "lower/baseline/error_rate"} <= set(final)
    assert (world / f"run-{optimizer}" / "checkpoint" / "trainer_state.pt").exists()
    assert len((world / f"run-{optimizer}" / "metrics.jsonl").read_text().splitlines()) == 16


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_identical_metrics(world):
    full = train(load_config(write_config(world, "full", steps=6, eval_every=3)), resume=False,
                 log=lambda _: None)
    config = write_config(world, "resumed", steps=6, eval_every=3)
    first = train(load_config(config, ["steps=3"]), resume=False, log=lambda _: None)
    rest = train(load_config(config), resume=True, log=lambda _: None)
    resumed = first + rest
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_a_save_stopped_between_its_renames_leaves_the_previous_checkpoint_to_resume_from(world, monkeypatch):
    from pathlib import Path

    config = write_config(world, "swapped", steps=2, checkpoint_every=1, eval_every=0)
    train(load_config(config, ["steps=1"]), resume=False, log=lambda _: None)
    rename = Path.rename

    def stopped(self, target):  # the save at step 2 dies once the old checkpoint is moved aside
        if self.name == "checkpoint.tmp":
            raise OSError("the machine went down")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", stopped)
    with pytest.raises(OSError, match="went down"):
        train(load_config(config), resume=True, log=lambda _: None)
    monkeypatch.undo()
    out = world / "swapped"
    assert not (out / "checkpoint").exists() and (out / "checkpoint.old" / "trainer_state.pt").is_file()
    resumed = train(load_config(config), resume=True, log=lambda _: None)
    assert [r["step"] for r in resumed] == [2]  # from the step-1 checkpoint, not from scratch
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


def test_export_writes_the_checkpoints_policy_as_a_plain_transformers_model(world):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cgpo.trainer.checkpoint import export

    train(load_config(write_config(world, "exported-run", steps=1, eval_every=0)), resume=False, log=lambda _: None)
    checkpoint = world / "exported-run" / "checkpoint"
    out = export(checkpoint, world / "exported")
    saved, exported = load_file(checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(saved) == sorted(exported) and all(torch.equal(saved[k], exported[k]) for k in saved)
    assert not (out / "trainer_state.pt").exists()
    AutoModelForCausalLM.from_pretrained(out)  # loads as any model does


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


@pytest.mark.slow
def test_eval_reports_ifevals_accuracies_greedy_and_kl_only_for_a_trained_policy(world):
    from cgpo.trainer.loop import eval_checkpoint

    overrides = ["generation.eval_temperature=0", "generation.eval_max_new_tokens=6"]
    config = write_config(world, "evaluated", steps=2)
    records = train(load_config(config, overrides), resume=False, log=lambda _: None)
    before = eval_checkpoint(load_config(config, overrides))
    assert "eval/lower/kl" not in before  # the initial policy is π_ref: no estimate is made, none reported
    assert set(before) >= {f"eval/lower/ifeval/{m}" for m in
                           ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")}
    # one instruction per prompt: prompt- and instruction-level agree, and strict equals the judge's rate
    assert before["eval/lower/ifeval/prompt_strict"] == before["eval/lower/ifeval/instruction_strict"]
    assert before["eval/lower/ifeval/prompt_strict"] == before["eval/lower/pass_rate"]
    assert before["eval/lower/ifeval/prompt_loose"] >= before["eval/lower/ifeval/prompt_strict"]
    checkpoint = world / "evaluated" / "checkpoint"
    after = eval_checkpoint(load_config(config, overrides), checkpoint)
    assert after["eval/lower/kl_stderr"] > 0
    # greedy: evaluating again writes the same responses, and the in-training final eval agrees
    again = eval_checkpoint(load_config(config, overrides), checkpoint)
    assert after == again
    assert after["eval/lower/pass_rate"] == records[-1]["eval/lower/pass_rate"]
    samples = (world / "evaluated" / "eval_samples" / "initial.jsonl").read_text().splitlines()
    assert [json.loads(s)["prompt"] for s in samples] == [f"Write about {t} in lowercase." for t in
                                                          ("a cat", "music", "rain", "trees")]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_run_that_crashed_after_a_checkpoint_resumes_exactly_without_duplicate_rows(world, schedule, monkeypatch):
    import cgpo.trainer.loop as loop_module

    overrides = [f"optim.schedule={schedule}", "optim.warmup_steps=2", "checkpoint_every=3"]
    full = train(load_config(write_config(world, f"whole-{schedule}", steps=6, eval_every=3), overrides),
                 resume=False, log=lambda _: None)
    config = write_config(world, f"crashed-{schedule}", steps=6, eval_every=3)
    real_step = loop_module.train_step

    def crash_in_step_6(run, step):
        if step == 5:
            raise RuntimeError("the machine went away")
        return real_step(run, step)

    monkeypatch.setattr(loop_module, "train_step", crash_in_step_6)
    with pytest.raises(RuntimeError, match="went away"):
        train(load_config(config, overrides), resume=False, log=lambda _: None)
    monkeypatch.undo()
    out = world / f"crashed-{schedule}"
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4, 5]
    logs: list[str] = []
    train(load_config(config, overrides), resume=True, log=logs.append)
    assert any(line.startswith("resumed from") and line.endswith("at step 3") for line in logs)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]  # steps 4 and 5 once, from the resumed run
    assert len({r["lr"] for r in rows[1:]}) > 2  # the schedule moves the learning rate
    for a, b in zip(full, rows, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-5, abs=1e-6)
    train(load_config(config, [*overrides, "steps=2"]), resume=False, log=lambda _: None)  # starting over
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_the_held_out_kl_estimates_kl_on_samples_at_the_training_temperature(world, tmp_path):
    """One-token responses: KL(π_w ‖ π_ref) over responses is the next-token KL, computed exactly here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgpo.trainer.loop import eval_checkpoint

    n = 300
    text = "Write about the sea in lowercase."
    (tmp_path / "eval.jsonl").write_text((json.dumps({"prompt": text, "metadata": LOWERCASE}) + "\n") * n)
    tokenizer = AutoTokenizer.from_pretrained(world / "policy")
    reference = AutoModelForCausalLM.from_pretrained(world / "policy")
    trained = AutoModelForCausalLM.from_pretrained(world / "policy")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trained.lm_head.parameters():
            p.add_(0.15 * torch.randn(p.shape, generator=gen))
    trained.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(trained.eval()(input_ids=ids).logits[0, -1].double() / 0.8, -1)
        ref = torch.log_softmax(reference.eval()(input_ids=ids).logits[0, -1].double() / 0.8, -1)
    ratio = logp - ref
    kl = float((logp.exp() * ratio).sum())
    stderr = float(((logp.exp() * (ratio - kl) ** 2).sum() / n) ** 0.5)
    greedy = float(ratio[logp.argmax()])  # what ρ of the greedy response would report
    assert abs(greedy - kl) > 10 * stderr  # the fixture tells the two apart

    config = write_config(world, "kl-estimate", steps=1)
    overrides = ["generation.temperature=0.8", "generation.max_new_tokens=1", "generation.eval_temperature=0",
                 f"tasks.lower.eval_prompts={tmp_path / 'eval.jsonl'}", f"output_dir={tmp_path / 'out'}"]
    record = eval_checkpoint(load_config(config, overrides), tmp_path / "checkpoint", log=lambda _: None)
    assert record["eval/lower/kl"] == pytest.approx(kl, abs=4 * stderr)
    assert record["eval/lower/kl_stderr"] == pytest.approx(stderr, rel=0.3)


@pytest.mark.slow
def test_the_monitor_warns_and_with_action_stop_ends_the_run_at_a_checkpoint(world, monkeypatch):
    import cgpo.trainer.setup as setup_module
    from cgpo.trainer.monitor import Alert

    class FiresAtStep2:
        evaluates_start = False

        def __init__(self, config, tasks):
            pass

        def observe(self, record):
            if record["step"] != 2:
                return {}, []
            return {"lower/hacking_score": 0.9}, [Alert("lower", "instructions", "train", 1, 2, 2, 0.9, 0.95, -0.9)]

    monkeypatch.setattr(setup_module, "HackingMonitor", FiresAtStep2)
    for action, steps in (("warn", [1, 2, 3, 4]), ("stop", [1, 2])):
        logs: list[str] = []
        records = train(load_config(write_config(world, f"monitor-{action}", steps=4), [f"monitor.action={action}"]),
                        resume=False, log=logs.append)
        assert [r["step"] for r in records] == steps
        assert records[1]["lower/hacking_score"] == 0.9
        warnings = [line for line in logs if line.startswith("WARNING reward hacking")]
        assert len(warnings) == 1 and "task 'lower', judge 'instructions'" in warnings[0]
        assert "steps 1-2" in warnings[0]
        state = torch.load(world / f"monitor-{action}" / "checkpoint" / "trainer_state.pt", weights_only=False)
        assert state["step"] == steps[-1]


def test_evaluations_under_a_yardstick_also_report_the_reward_the_task_optimizes(world, tmp_path):
    from cgpo.trainer.loop import eval_checkpoint

    tok = build_tokenizer()
    save_tiny_model(tmp_path / "yardstick", tokenizer=tok,
                    model=build_model(tok, kind="sequence-classification", hidden_size=64, num_heads=2, seed=3))
    config = write_config(world, "yardstick", steps=1)
    greedy = ["generation.eval_temperature=0", "generation.eval_max_new_tokens=6", f"output_dir={tmp_path / 'out'}"]
    own = eval_checkpoint(load_config(config, greedy), log=lambda _: None)
    measured = eval_checkpoint(load_config(config, [*greedy, f"eval_reward_model={{embedded: {tmp_path}/yardstick}}"]),
                               log=lambda _: None)
    assert "eval/lower/task_rm/reward" not in own  # no yardstick: the task's own RM is the only one
    assert measured["eval/lower/task_rm/reward"] == pytest.approx(own["eval/lower/reward"], abs=1e-5)
    assert measured["eval/lower/task_rm/calibrated_reward"] == pytest.approx(own["eval/lower/calibrated_reward"],
                                                                             abs=1e-6)
    assert measured["eval/lower/reward"] != pytest.approx(own["eval/lower/reward"], abs=1e-3)
