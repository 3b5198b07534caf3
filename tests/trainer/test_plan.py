"""The memory plan (trainer/plan.py, ``cgpo plan``): its persistent figures are the bytes a rank really holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cgpo.cli import main
from cgpo.trainer.logprobs import sequence_logprobs
from cgpo.trainer.plan import (BUILTIN, GB, LORA_TARGETS, Architecture, Lora, Setup, activation_bytes, gathered_bytes,
                               held_states, lora_tensors, numel, parameter_count, plan, policy_tensors, shard_rows)
from tests.conftest import free_port
from tests.trainer.fsdp_held_bytes import CASES

SCRIPT = Path(__file__).with_name("fsdp_held_bytes.py")


def tiny(tied: bool, **extra):
    """A tiny LlamaForCausalLM and the planner's view of the same config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    values = dict(hidden_size=27, intermediate_size=51, num_hidden_layers=2, num_attention_heads=3,
                  num_key_value_heads=1, head_dim=10, vocab_size=97, tie_word_embeddings=tied, **extra)
    config = LlamaConfig(max_position_embeddings=64, **values)
    return LlamaForCausalLM(config), Architecture.read(config, "tiny")


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("biases", [False, True])
def test_parameters_are_those_of_transformers_llama(tied, biases):
    model, arch = tiny(tied, attention_bias=biases, mlp_bias=biases)
    assert dict(policy_tensors(arch)) == {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert parameter_count(arch) == sum(p.numel() for p in model.parameters())


def test_builtin_architectures_have_their_published_sizes():
    published = {"smollm2-135m": 134_515_008, "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824,
                 "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496}
    assert {name: parameter_count(Architecture(**BUILTIN[name])) for name in BUILTIN} == published


def test_shards_are_torch_chunks():
    for rows in range(12):
        for world in range(1, 6):
            chunks = [c.shape[0] for c in torch.chunk(torch.empty(rows), world)] if rows else []
            assert [shard_rows(rows, world, r) for r in range(world)] == chunks + [0] * (world - len(chunks))


def test_one_process_holds_the_whole_model():
    model, arch = tiny(tied=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 97, (2, 9))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    params = list(model.parameters())
    whole = 4 * sum(p.numel() for p in params)
    held = {"parameters": whole, "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params),
            "optimizer": sum(t.numel() * t.element_size() for p in params
                             for key, t in optimizer.state[p].items() if key != "step")}
    for gpus in (1, 8):  # ddp: every GPU holds everything
        states = held_states(arch, Setup(gpus=gpus, gpu_memory=80, parallel="ddp"))
        assert {k: getattr(states, k) for k in held} == held
        assert states.reference == whole and states.total == 5 * whole  # 20 bytes per parameter


@pytest.mark.slow  # two torchrun processes: 15-20 s on two cores
def test_two_fsdp_ranks_hold_what_the_plan_says(tmp_path, subprocess_env):
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT),
                           str(tmp_path)], env=dict(subprocess_env, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    kinds = ("parameters", "gradients", "optimizer", "reference")
    for rank in (0, 1):
        measured = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        for case, (tied, precision, r) in CASES.items():
            _, arch = tiny(tied)
            setup = Setup(gpus=2, gpu_memory=80, parallel="fsdp", precision=precision,
                          lora=Lora(r) if r is not None else None)
            for padded, view in ((False, "local"), (True, "allocated")):
                states = held_states(arch, setup, rank, padded)
                got = {kind: measured[case][kind][view] for kind in kinds}
                assert got == {kind: getattr(states, kind) for kind in kinds}, (case, rank, view)
            table = plan(arch, setup).states  # rank 0's, which holds the most
            assert all(getattr(table, kind) >= measured[case][kind]["allocated"] for kind in kinds)
            if rank == 0:
                assert {kind: getattr(table, kind) for kind in kinds} == got
        # under MixedPrecisionPolicy(bf16, reduce fp32) the sharded parameters (the masters) and gradients stay fp32
        assert measured["tied-bf16"]["dtypes"] == {"parameters": "torch.float32", "gradients": "torch.float32"}
        # LoRA: the adapters (fp32 masters under bf16 too) are all that is trained; the base gets no gradient
        assert measured["lora-bf16"]["dtypes"] == {"parameters": "torch.float32", "gradients": "torch.float32"}
        assert measured["lora-bf16"]["untrained_grads"] == measured["lora-fp32"]["untrained_grads"] == 0
    unpadded = json.loads((tmp_path / "rank-1.json").read_text())["untied-fp32"]["parameters"]
    assert unpadded["local"] < unpadded["allocated"]  # the odd sizes did pad rank 1's shards


@pytest.mark.parametrize("targets", [LORA_TARGETS, ("q_proj", "v_proj")])
def test_lora_trains_r_times_in_plus_out_per_targeted_linear(targets):
    model, arch = tiny(tied=True)
    r = 4
    expected = sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)
    assert numel(lora_tensors(arch, r, targets)) == expected
    setup = Setup(gpus=1, gpu_memory=80, precision="bf16", lora=Lora(r, targets))
    states = held_states(arch, setup)
    assert (states.gradients, states.optimizer, states.master, states.reference) == (4 * expected, 8 * expected,
                                                                                     4 * expected, 0)
    assert states.parameters == 4 * expected + 2 * parameter_count(arch)  # the frozen base in bf16


def test_fsdp_divides_the_states_and_bf16_halves_the_reference():
    arch = Architecture(**BUILTIN["llama-3.1-8b"])
    ddp = held_states(arch, Setup(gpus=8, gpu_memory=80, precision="bf16"))
    fsdp = held_states(arch, Setup(gpus=8, gpu_memory=80, parallel="fsdp", precision="bf16"))
    assert ddp.total == 20 * parameter_count(arch)
    assert fsdp.gradients == pytest.approx(ddp.gradients / 8, rel=1e-4)
    assert fsdp.reference == pytest.approx(ddp.reference / 16, rel=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activations_are_what_autograd_saves(precision):
    """The estimate against the bytes autograd saves for one padded micro-batch's log-probs (CPU's fused
    SDPA kernel, like CUDA's, keeps no T×T scores); under bf16 autocast the saved bf16 weight casts too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, use_cache=False)
    model, arch = LlamaForCausalLM(config).eval(), Architecture.read(config, "tiny")
    b, prompt, new = 4, 32, 16
    prompts = [[1 + (i * 7 + j) % 290 for j in range(prompt - i)] for i in range(b)]  # one length per row: padded
    responses = [[1 + (i * 3 + j) % 290 for j in range(new)] for i in range(b)]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        sequence_logprobs(model, prompts, responses, micro_batch_size=b)
    setup = Setup(gpus=1, gpu_memory=1, precision=precision, micro_batch=b, prompt_tokens=prompt, new_tokens=new)
    activations, logits = activation_bytes(arch, setup)
    estimate = activations - logits // 2 + gathered_bytes(arch, setup)  # the logits' gradient comes later
    assert sum(saved.values()) == pytest.approx(estimate, rel=0.1)


# ------------------------------------------------------------------ the command


def run_config(tmp_path: Path, policy: str = "./policy", **extra) -> Path:
    raw = {"policy": policy, "precision": "bf16", "generation": {"max_new_tokens": 512},
           "optim": {"micro_batch_size": 8},
           "tasks": [{"name": "t", "prompts": "p.jsonl", "reward_model": {"embedded": "./rm"}, **extra}]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_command_prints_a_table_and_whether_it_fits(tmp_path, capsys):
    config = str(run_config(tmp_path))
    assert main(["plan", config, "--gpus", "8", "--gpu-memory", "80", "--model-config", "llama-3.1-8b"]) == 1
    out = capsys.readouterr().out
    assert "| per GPU | GB | held as |" in out and "| optimizer state (AdamW) | 64.24 |" in out
    assert out.strip().splitlines()[-1].startswith("fits: no — peak")
    assert main(["plan", config, "--gpus", "8", "--gpu-memory", "80", "--model-config", "llama-3.1-8b",
                 "--parallel", "fsdp", "--activation-checkpointing"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("fits: yes — peak")
    assert main(["plan", config, "--gpus", "8", "--gpu-memory", "80", "--model-config", "smollm2-135m", "--row",
                 "--lora-r", "16", "--parallel", "fsdp"]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    assert header.startswith("| model |") and row.startswith("| smollm2-135m | 134.5 M | 8×80 GB | fsdp |")


def test_the_architecture_comes_from_the_policy_or_a_config_file(tmp_path, capsys):
    model, arch = tiny(tied=False)
    model.config.save_pretrained(tmp_path / "policy")
    config = str(run_config(tmp_path, policy=str(tmp_path / "policy")))
    for extra in ([], ["--model-config", str(tmp_path / "policy" / "config.json")]):
        main(["plan", config, "--gpus", "1", "--gpu-memory", "1", *extra])
        assert f"{parameter_count(arch) / 1e6:.1f} M parameters" in capsys.readouterr().out


def test_the_vllm_engine_takes_its_share_of_the_gpu(tmp_path):
    from cgpo.trainer.config import load_config

    config = load_config(run_config(tmp_path), ["generation.engine=vllm"])
    result = plan(Architecture(**BUILTIN["smollm2-135m"]), Setup.from_run(config, gpus=2, gpu_memory=80))
    assert result.vllm == 0.4 * 80 * GB and result.kv_cache == 0
    assert result.peak == result.states.total + result.vllm + max(result.phases.values())


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0", "--gpu-memory", "80", "--model-config", "llama-3.2-1b"], "--gpus must be >= 1"),
    (["--gpus", "8", "--gpu-memory", "80", "--model-config", "llama-9b"], "neither a config.json"),
    (["--gpus", "8", "--gpu-memory", "0", "--model-config", "llama-3.2-1b"], "--gpu-memory must be > 0"),
    (["--gpus", "8", "--gpu-memory", "80", "--model-config", "llama-3.2-1b", "--lora-r", "0"], "--lora-r must be"),
    (["--gpus", "8", "--gpu-memory", "80", "--model-config", "llama-3.2-1b", "--lora-r", "8",
      "--lora-targets", "lm_head"], "--lora-targets must be among"),
])
def test_bad_input_ends_in_die(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(run_config(tmp_path)), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
