"""LoRA (``lora: {...}``): only the adapters train, π_ref is exactly the base model, and a checkpoint's
export — the adapter directory or the merged model — gives the policy's log-probs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cgpo.trainer.config import ConfigError, load_config
from cgpo.trainer.logprobs import sequence_logprobs
from tests.worlds import write_config

pytestmark = pytest.mark.slow  # each test trains (2-3 steps)

PROMPTS = [[1, 40, 41, 42], [1, 43], [1, 44, 45]]
RESPONSES = [[50, 51, 52], [53], [54, 55, 56, 57]]
TARGETS = ("q_proj", "v_proj", "down_proj")
R, ALPHA = 4, 16.0
GREEDY_EVAL = ["generation.eval_temperature=0", "generation.eval_max_new_tokens=6"]


def logprobs(model) -> torch.Tensor:
    with torch.no_grad():
        return sequence_logprobs(model, PROMPTS, RESPONSES).logprobs


def base_model(world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(world / "policy", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def lora_run(world):
    """A two-step LoRA run; yields the run (its policy as trained) and its output directory."""
    from cgpo.trainer.loop import run_training
    from cgpo.trainer.setup import training_run

    overrides = [f"lora={{r: {R}, alpha: {ALPHA}, target_modules: [{', '.join(TARGETS)}]}}"]
    config = load_config(write_config(world, "lora", steps=2, lr=3e-2), [*overrides, *GREEDY_EVAL])
    with training_run(config, resume=False, log=lambda _: None) as run:
        records = run_training(run)
        yield run, records


def test_only_the_adapters_train_and_the_reference_is_the_base_model(lora_run, world):
    run, records = lora_run
    policy, base = run.models.policy, base_model(world)
    adapted = [n for n, _ in base.named_modules() if n.rsplit(".", 1)[-1] in TARGETS]
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained == {f"base_model.model.{m}.lora_{ab}.default.weight" for m in adapted for ab in "AB"}
    assert set(id(p) for group in run.optimizer.param_groups for p in group["params"]) == {
        id(p) for p in policy.parameters() if p.requires_grad}
    base_weights = dict(base.named_parameters())
    for name, p in policy.named_parameters():
        if not p.requires_grad:  # every base weight exactly as loaded
            original = base_weights[name.removeprefix("base_model.model.").replace(".base_layer.", ".")]
            assert torch.equal(p.detach(), original.detach()), name
    assert all(float(p.detach().abs().max()) > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    assert records[-1]["grad_norm"] > 0
    # π_ref: the same modules with the adapters off are the base model, exactly; the policy has moved
    reference, policy_lp = logprobs(run.models.reference), logprobs(policy)
    torch.testing.assert_close(reference, logprobs(base), rtol=0, atol=1e-6)
    assert (policy_lp - reference).abs().max() > 1e-3


def test_the_policy_is_the_base_plus_scaled_low_rank_updates(lora_run, world):
    """W + (α/r)·B A, computed here from the adapter tensors, gives the policy's log-probs."""
    run, _ = lora_run
    by_hand = base_model(world)
    modules = dict(by_hand.named_modules())
    adapters = {n: p.detach() for n, p in run.models.policy.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name in {n.removeprefix("base_model.model.").split(".lora_")[0] for n in adapters}:
            a = adapters[f"base_model.model.{name}.lora_A.default.weight"]
            b = adapters[f"base_model.model.{name}.lora_B.default.weight"]
            modules[name].weight += (ALPHA / R) * b @ a
    torch.testing.assert_close(logprobs(by_hand), logprobs(run.models.policy), rtol=1e-5, atol=1e-5)


def test_the_checkpoint_holds_the_adapters_and_both_exports_agree_with_the_policy(lora_run, world, tmp_path):
    from peft import PeftModel

    from cgpo.trainer.checkpoint import export

    run, _ = lora_run
    checkpoint = run.checkpoint_dir
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["r"] == R and config["lora_alpha"] == ALPHA
    assert config["base_model_name_or_path"] == str((world / "policy").resolve())
    expected = logprobs(run.models.policy)

    merged = export(checkpoint, tmp_path / "merged", merge=True)
    from transformers import AutoModelForCausalLM

    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(logprobs(merged_model), expected, rtol=1e-5, atol=1e-5)

    adapter = export(checkpoint, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(base_model(world), adapter).eval()
    torch.testing.assert_close(logprobs(loaded), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_resumed_lora_run_equals_an_uninterrupted_one(world, parallel):
    """Whole adapters (one process) or their shards (``fsdp``, a group of one) resume exactly."""
    from cgpo.trainer.loop import train

    lora = [f"lora={{r: {R}, alpha: {ALPHA}}}", f"parallel={parallel}"]
    path = write_config(world, f"lora-whole-{parallel}", steps=3, lr=3e-2, checkpoint_every=2)
    whole = train(load_config(path, lora), resume=False, log=lambda _: None)
    parts = [f"output_dir={world}/lora-parts-{parallel}", *lora]
    train(load_config(path, [*parts, "steps=2"]), resume=False, log=lambda _: None)
    resumed = train(load_config(path, parts), resume=True, log=lambda _: None)
    assert [r["step"] for r in resumed] == [3]
    keys = [k for k in whole[-1] if not k.startswith("time/")]
    assert {k: resumed[-1][k] for k in keys} == pytest.approx({k: whole[-1][k] for k in keys}, rel=1e-5, abs=1e-6)


def test_lora_settings_are_checked(world):
    path = write_config(world, "lora-bad", steps=1)
    with pytest.raises(ConfigError, match="reference: must be unset with lora"):
        load_config(path, ["lora={r: 4}", f"reference={world}/policy"])
    with pytest.raises(ConfigError, match="lora.target_modules: must name at least one module"):
        load_config(path, ["lora={target_modules: []}"])
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(path, ["lora={r: 0}"])
    from cgpo.trainer.setup import load_models

    with pytest.raises(ValueError, match="lora.target_modules"):
        load_models(load_config(path, ["lora={target_modules: [no_such_proj]}"]), "cpu")
    for outside in ("lm_head", "embed_tokens"):  # not a linear of a decoder layer: no exact merge, no sync
        with pytest.raises(ValueError, match=f"lora.target_modules: .*{outside}"):
            load_models(load_config(path, [f"lora={{target_modules: [q_proj, {outside}]}}"]), "cpu")


def test_a_lora_checkpoint_resumes_only_with_the_adapters_it_was_written_with(lora_run, world):
    from cgpo.trainer.checkpoint import TrainState, load_checkpoint
    from cgpo.trainer.setup import load_models, make_optimizer

    run, _ = lora_run
    path = write_config(world, "other-adapters", steps=1)
    for changed in (f"lora={{r: {R}, alpha: {2 * ALPHA}, target_modules: [{', '.join(TARGETS)}]}}",
                    f"lora={{r: {2 * R}, alpha: {ALPHA}, target_modules: [{', '.join(TARGETS)}]}}",
                    f"lora={{r: {R}, alpha: {ALPHA}, target_modules: [q_proj]}}"):
        config = load_config(path, [changed])
        models = load_models(config, "cpu")
        optimizer, scheduler = make_optimizer(config, models.policy)
        with pytest.raises(ValueError, match="adapters"):
            load_checkpoint(run.checkpoint_dir, TrainState(models.policy, models.tokenizer, optimizer, scheduler, {}))


def test_a_checkpoint_resumes_only_the_way_it_was_written(lora_run, world):
    from cgpo.trainer.checkpoint import TrainState, load_checkpoint
    from cgpo.trainer.setup import load_models, make_optimizer

    run, _ = lora_run
    config = load_config(write_config(world, "full", steps=1))
    models = load_models(config, "cpu")
    optimizer, scheduler = make_optimizer(config, models.policy)
    before = copy.deepcopy(models.policy.state_dict())
    with pytest.raises(ValueError, match="written with LoRA adapters"):
        load_checkpoint(run.checkpoint_dir, TrainState(models.policy, models.tokenizer, optimizer, scheduler, {}))
    assert all(torch.equal(before[k], v) for k, v in models.policy.state_dict().items())  # nothing changed


def test_cgpo_eval_reads_lora_and_sharded_checkpoints(lora_run, world):
    """``cgpo eval`` on a LoRA checkpoint (adapters merged into the base) and on a sharded one (``parallel:
    fsdp`` in one process) evaluates the trained policy: greedy, as the run's own final evaluation did."""
    from cgpo.trainer.loop import eval_checkpoint, train

    run, records = lora_run
    config = load_config(write_config(world, "lora", steps=2, lr=3e-2), GREEDY_EVAL)
    after = eval_checkpoint(config, run.checkpoint_dir, log=lambda _: None)
    assert after["eval/lower/pass_rate"] == records[-1]["eval/lower/pass_rate"]
    assert after["eval/lower/reward"] == pytest.approx(records[-1]["eval/lower/reward"], rel=1e-5)
    assert after["eval/lower/kl"] > 0

    sharded = load_config(write_config(world, "sharded", steps=1, lr=3e-2), [*GREEDY_EVAL, "parallel=fsdp"])
    final = train(sharded, resume=False, log=lambda _: None)[-1]
    assert (world / "sharded" / "checkpoint" / "dcp").is_dir()
    again = eval_checkpoint(sharded, world / "sharded" / "checkpoint", log=lambda _: None)
    assert again["eval/lower/reward"] == pytest.approx(final["eval/lower/reward"], rel=1e-5)
