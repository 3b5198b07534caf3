"""Sharded training (``parallel: fsdp``, FSDP2 over two gloo ranks) trains what one process trains, resumes
exactly from its checkpoint, and never hangs when the ranks' data call for different numbers of passes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import free_port
from cgpo.trainer.config import load_config
from cgpo.trainer.loop import train

OPTIMIZERS = ("crpg", "codpo", "crraft")


def three_tasks(world: Path, name: str, steps: int) -> Path:
    """One run with a task per optimizer, on the tiny world; batch 3 and 3 held-out prompts split 2 + 1 over
    two ranks, and one sequence per log-prob pass: the ranks' pass counts differ everywhere."""
    held_out = world / "eval3.jsonl"
    held_out.write_text("".join((world / "eval.jsonl").read_text().splitlines(keepends=True)[:3]))
    tasks = "".join(f"""
  - name: {optimizer}
    prompts: {world}/prompts.jsonl
    eval_prompts: {held_out}
    reward_model: {{embedded: {world}/rm}}
    judges: [instructions]
    optimizer: {optimizer}
    k: 4
    batch_size: 3
    kl_max: 100
    on_truncation: keep
""" for optimizer in OPTIMIZERS)
    path = world / f"{name}.yaml"
    path.write_text(f"""
policy: {world}/policy
steps: {steps}
eval_every: 2
checkpoint_every: 2
output_dir: {world}/{name}
generation: {{max_new_tokens: 8}}
optim: {{lr: 1.0e-2, micro_batch_size: 1}}
tasks:{tasks}""")
    return path


def torchrun(config: Path, env: dict[str, str], *overrides: str, parallel: str = "fsdp") -> None:
    launcher = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(launcher), "--nproc_per_node", "2", "--master_port", str(free_port()),
                           "-m", "cgpo.trainer", str(config), f"parallel={parallel}", *overrides],
                          env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def metrics(directory: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """The run's final weights: its checkpoint as a transformers directory (``cgpo export`` of a sharded one)."""
    from safetensors.torch import load_file

    from cgpo.trainer.checkpoint import export

    if (directory / "checkpoint" / "dcp").is_dir():
        return load_file(export(directory / "checkpoint", directory / "exported") / "model.safetensors")
    return load_file(directory / "checkpoint" / "model.safetensors")


def same_metrics(a: list[dict[str, float]], b: list[dict[str, float]], rel: float = 1e-4) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        keys = sorted(k for k in x if not k.startswith("time/"))
        assert keys == sorted(k for k in y if not k.startswith("time/"))
        assert {k: x[k] for k in keys} == pytest.approx({k: y[k] for k in keys}, rel=rel, abs=1e-5)


@pytest.mark.slow
def test_a_sharded_three_optimizer_run_matches_one_process_with_or_without_recomputation_and_resumes(
        world, subprocess_env):
    config = three_tasks(world, "fsdp", steps=3)
    single = train(load_config(config, [f"output_dir={world}/fsdp-single"]), resume=False, log=lambda _: None)
    torchrun(config, subprocess_env, f"output_dir={world}/fsdp-ranks")
    sharded = metrics(world / "fsdp-ranks")
    same_metrics(single, sharded)
    assert all(single[-1][f"{t}/used_fraction"] > 0 for t in OPTIMIZERS)  # every optimizer trained
    assert (world / "fsdp-ranks" / "checkpoint" / "dcp").is_dir()  # every rank wrote its shards
    one, two = weights(world / "fsdp-single"), weights(world / "fsdp-ranks")
    initial = _initial(world)
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-3 and sorted(one) == sorted(two)
    # as for replicas (tests/trainer/test_distributed.py): Adam turns rounding noise of near-zero gradients
    # into steps of up to lr, so nearly all weights agree to float precision and none by more than a
    # small fraction of how far training moved them
    diffs = torch.cat([(two[k] - one[k]).abs().flatten() for k in one])
    assert diffs.max().item() < 0.01 * moved
    assert (diffs < 1e-6).float().mean().item() > 0.999

    # activation checkpointing recomputes the layers in the backward: the same run
    torchrun(config, subprocess_env, f"output_dir={world}/fsdp-checkpointed", "activation_checkpointing=true")
    same_metrics(single, metrics(world / "fsdp-checkpointed"))
    recomputed = weights(world / "fsdp-checkpointed")
    assert max((recomputed[k] - two[k]).abs().max().item() for k in two) < 0.01 * moved

    # stopped after the checkpoint at step 2, then resumed from the gathered weights and optimizer state
    torchrun(config, subprocess_env, f"output_dir={world}/fsdp-resumed", "steps=2")
    shutil.copytree(world / "fsdp-resumed", world / "fsdp-one-process")
    torchrun(config, subprocess_env, f"output_dir={world}/fsdp-resumed")
    resumed = metrics(world / "fsdp-resumed")
    same_metrics(sharded, resumed, rel=1e-5)
    resumed_weights = weights(world / "fsdp-resumed")
    assert max((resumed_weights[k] - two[k]).abs().max().item() for k in two) < 1e-6

    # the two ranks' shards, resumed by one process (sharded over a group of one): the same run
    alone = train(load_config(config, [f"output_dir={world}/fsdp-one-process", "parallel=fsdp"]), resume=True,
                  log=lambda _: None)
    assert [r["step"] for r in alone] == [3]
    same_metrics(sharded[-1:], alone)
    assert max((weights(world / "fsdp-one-process")[k] - two[k]).abs().max().item() for k in two) < 0.01 * moved


@pytest.mark.slow
def test_bf16_mixed_precision_over_two_ranks_matches_one_sharded_process(world, subprocess_env):
    """``precision: bf16`` sharded: bf16 compute over fp32 masters (``MixedPrecisionPolicy``), on two ranks and
    in one process sharded the same way (a group of one). One row per decoding batch and one sequence per
    log-prob pass make every bf16 matmul see the same operands in both runs (bf16 kernels round a row
    differently with the batch's shape: batched, the runs' samples differ from step 1). What still differs
    is the order in which the fp32 gradients are summed (within a rank, then across the ranks), so the
    updated fp32 masters agree to float precision but not bit for bit; a master one ulp apart can round to
    another bf16 value, and from the next rollout on a sample may flip and the runs part (measured: once a
    token flipped at step 3, once not within 3 steps). So the whole first step is compared — the initial
    evaluation, every rollout, score, loss and the gradient norm, to the fp32 test's tolerance (measured:
    at most 1.1e-7 relative) — and the fp32 masters after it, as closely as the fp32 test's weights."""
    config = three_tasks(world, "bf16", steps=1)
    rows = ["precision=bf16", "generation.max_batch_rows=1"]
    alone = train(load_config(config, [f"output_dir={world}/bf16-one", "parallel=fsdp", *rows]), resume=False,
                  log=lambda _: None)
    torchrun(config, subprocess_env, f"output_dir={world}/bf16-two", *rows)
    two_ranks = metrics(world / "bf16-two")
    assert [r["step"] for r in alone] == [r["step"] for r in two_ranks] == [0, 1]
    before_the_update = [{k: v for k, v in r.items() if r["step"] == 0 or not k.startswith("eval/")}
                         for r in (*alone, *two_ranks)]  # step 1's evaluation already samples updated weights
    same_metrics(before_the_update[:2], before_the_update[2:])
    assert all(alone[1][f"{t}/used_fraction"] > 0 for t in OPTIMIZERS)
    one, two, initial = weights(world / "bf16-one"), weights(world / "bf16-two"), _initial(world)
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-3 and all(t.dtype == torch.float32 for t in two.values())  # fp32 masters
    diffs = torch.cat([(two[k] - one[k]).abs().flatten() for k in one])
    assert diffs.max().item() < 0.01 * moved
    assert (diffs < 1e-6).float().mean().item() > 0.999


@pytest.mark.slow
def test_lora_over_two_ranks_with_ddp_and_fsdp_matches_one_process(world, subprocess_env):
    """LoRA replicated (ddp) and sharded (fsdp) over two ranks trains what one process trains: the same
    metrics, the same adapters, and the base untouched."""
    from safetensors.torch import load_file

    from cgpo.trainer.checkpoint import export

    config = three_tasks(world, "lora", steps=2)
    lora = ["lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, gate_proj]}", "optim.lr=5.0e-2"]
    single = train(load_config(config, [f"output_dir={world}/lora-one", *lora]), resume=False, log=lambda _: None)
    adapters = {}
    for parallel in ("ddp", "fsdp"):
        torchrun(config, subprocess_env, f"output_dir={world}/lora-{parallel}", *lora, parallel=parallel)
        same_metrics(single, metrics(world / f"lora-{parallel}"))
        exported = export(world / f"lora-{parallel}" / "checkpoint", world / f"lora-{parallel}-adapter")
        adapters[parallel] = load_file(exported / "adapter_model.safetensors")
    one = load_file(world / "lora-one" / "checkpoint" / "adapter_model.safetensors")
    moved = max(one[k].abs().max().item() for k in one if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3 and all("lora_" in k for k in one)
    for parallel, got in adapters.items():
        assert sorted(got) == sorted(one)
        assert max((got[k] - one[k]).abs().max().item() for k in one) < 0.01 * moved, parallel


def _initial(world: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(world / "policy" / "model.safetensors")


def _lockstep_rank(rank: int, port: int, results: Path) -> None:
    """Rank 0 generates for three prompts and backpropagates through four sequences; rank 1 has no prompt
    and no sequence with a gradient: without lockstep rank 0 would wait forever for rank 1's passes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    from cgpo.trainer.config import GenerationConfig
    from cgpo.trainer.distributed import Dist, shard_model
    from cgpo.trainer.rollout import HFRollout
    from cgpo.trainer.step import _backward_through_policy
    from tests.tiny_models import build_tokenizer, tiny_pair

    dist = Dist.from_env("cpu", sharded=True)
    try:
        policy, _ = tiny_pair()
        shard_model(policy, bf16=False)
        engine = HFRollout(policy, build_tokenizer(), GenerationConfig(max_new_tokens=6), max_batch_rows=2,
                           lockstep=dist)
        prompts = [[1, 40, 41], [1, 42], [1, 43, 44, 45]] if rank == 0 else []
        rollouts = engine.generate(prompts, k=1, seed=3)
        pairs = ([[1, 40, 41]] * 4, [[50, 51], [52], [53, 54, 55], [56]])
        grad = torch.tensor([0.5, -1.0, 0.25, 2.0]) if rank == 0 else torch.zeros(4)
        _backward_through_policy(policy, pairs, grad, (1.0, 1), lockstep=dist)
        norm = sum(float(p.grad.full_tensor().pow(2).sum()) for p in policy.parameters() if p.grad is not None)
        # rank 1's view of the baseline cache (other file times on another node) asks for nothing new
        from cgpo.trainer.baselines import ShardedEngine, Sources, _draw
        from cgpo.trainer.data import Prompt

        tokenizer = build_tokenizer()
        missing = [Prompt("a", "Write about the sea."), Prompt("b", "Write about rain.")] if rank == 0 else []
        sources = Sources(tokenizer, ShardedEngine(engine, dist), None, None, main=rank == 0)
        drawn = _draw(missing, sources, seed=5)
        (results / f"rank{rank}.json").write_text(json.dumps({"responses": rollouts.response_ids, "norm": norm,
                                                             "baselines": {k: b.ids for k, b in drawn.items()}}))
        dist.barrier()  # no rank tears the group down while the other still talks (a run ends on a barrier too)
    finally:
        dist.close()


@pytest.mark.slow
def test_ranks_with_different_work_run_the_same_passes_and_get_one_process_results(tmp_path):
    import torch.multiprocessing as mp

    from cgpo.trainer.config import GenerationConfig
    from cgpo.trainer.rollout import HFRollout
    from cgpo.trainer.step import _backward_through_policy
    from tests.tiny_models import build_tokenizer, tiny_pair

    mp.start_processes(_lockstep_rank, args=(free_port(), tmp_path), nprocs=2, join=True, start_method="spawn")
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    policy, _ = tiny_pair()
    alone = HFRollout(policy, build_tokenizer(), GenerationConfig(max_new_tokens=6), max_batch_rows=2)
    expected = alone.generate([[1, 40, 41], [1, 42], [1, 43, 44, 45]], k=1, seed=3).response_ids
    assert rank0["responses"] == expected and rank1["responses"] == []
    from cgpo.trainer.baselines import Sources, _draw
    from cgpo.trainer.data import Prompt

    sampled = _draw([Prompt("a", "Write about the sea."), Prompt("b", "Write about rain.")],
                    Sources(build_tokenizer(), alone, None, None), seed=5)
    assert rank0["baselines"] == {k: b.ids for k, b in sampled.items()} and rank1["baselines"] == {}
    _backward_through_policy(policy, ([[1, 40, 41]] * 4, [[50, 51], [52], [53, 54, 55], [56]]),
                             torch.tensor([0.5, -1.0, 0.25, 2.0]), (1.0, 1))
    norm = sum(float(p.grad.pow(2).sum()) for p in policy.parameters() if p.grad is not None)
    # FSDP averages over the two ranks: rank 0's gradient, halved (the trainer multiplies by the world size)
    assert rank0["norm"] == pytest.approx(norm / 4, rel=1e-4) and rank1["norm"] == rank0["norm"]


@pytest.mark.parametrize(("tied", "lora", "precision"), [(False, False, "fp32"), (True, False, "fp32"),
                                                          (False, True, "fp32"), (True, True, "fp32"),
                                                          (True, False, "bf16"), (False, True, "bf16")])
def test_sharded_models_built_from_skeletons_equal_the_loaded_ones(tmp_path, tied, lora, precision):
    """``load_sharded_models`` (meta-device skeletons, sharded, then filled from rank 0's host copy; here a
    group of one) gives the policy and π_ref that ``load_models`` gives: the same log-probs, tied weights
    still tied, RoPE's buffers restored, and the RNG where one process leaves it."""
    from cgpo.trainer.config import build_config
    from cgpo.trainer.distributed import Dist
    from cgpo.trainer.logprobs import sequence_logprobs
    from cgpo.trainer.setup import load_models, load_sharded_models
    from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, initializer_range=0.2)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    path = save_tiny_model(tmp_path / "policy", tokenizer=tokenizer, model=model)
    task = {"name": "t", "prompts": "unused.jsonl", "reward_model": {"embedded": "rm"}}
    raw = {"policy": str(path), "tasks": [task], "precision": precision}
    if lora:
        raw["lora"] = {"r": 4, "alpha": 8}
    config = build_config(raw)
    prompts, responses = [[1, 40, 41], [1, 42]], [[50, 51, 52], [53]]
    dist = Dist.from_env("cpu", sharded=True)
    try:
        torch.manual_seed(3)
        loaded = load_models(config, torch.device("cpu"))
        rng = torch.get_rng_state()
        torch.manual_seed(3)
        sharded = load_sharded_models(config, torch.device("cpu"), dist)
        assert torch.equal(torch.get_rng_state(), rng)
        from torch.distributed.tensor import DTensor

        assert all(isinstance(p, DTensor) for p in sharded.policy.parameters())
        whole = dict(loaded.policy.named_parameters())  # every tensor, the fresh adapters' A included
        for name, p in sharded.policy.named_parameters():
            assert torch.equal(p.full_tensor(), whole[name].detach()), name
        if precision == "fp32":  # bf16: the sharded π_ref is held in bf16, the loaded one in fp32
            with torch.no_grad():
                for name in ("policy", "reference"):
                    a = sequence_logprobs(getattr(loaded, name), prompts, responses).logprobs
                    b = sequence_logprobs(getattr(sharded, name), prompts, responses).logprobs
                    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        for held in (sharded.policy, sharded.reference):  # RoPE's frequencies stay fp32 in every model
            if isinstance(held, torch.nn.Module):
                assert all(b.dtype == torch.float32 for b in held.buffers())
        base = sharded.policy.get_base_model() if lora else sharded.policy
        assert (base.lm_head.weight is base.model.embed_tokens.weight) == tied
        rope = dict(base.named_buffers())["model.rotary_emb.inv_freq"]
        torch.testing.assert_close(rope, dict(model.named_buffers())["model.rotary_emb.inv_freq"])
    finally:
        dist.close()
