"""Data parallelism: two gloo ranks under torchrun train exactly what one process trains on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import free_port
from tests.worlds import write_config
from tests.trainer.test_method import (
    PROMPT,
    assert_same_gradient,
    expected_grads,
    make_batch,
    make_task,
    method_of,
    responses,
)
from tests.tiny_models import tiny_pair
from cgpo.trainer.config import load_config
from cgpo.trainer.distributed import Dist
from cgpo.trainer.loop import train
from cgpo.trainer.rollout import Rollouts
from cgpo.trainer.scoring import TaskScores
from cgpo.trainer.step import TaskBatch, task_update


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "checkpoint" / "model.safetensors")


def metrics(directory: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["crraft", "codpo"])
def test_two_ranks_match_one_process_on_the_same_data(world, subprocess_env, optimizer):
    # batch_size 5 splits 3 + 2: uneven shards; CRRAFT also trains on baselines, CODPO on pairs
    config = write_config(world, f"dp-{optimizer}", optimizer, lr=1e-2, steps=3, eval_every=2)
    overrides = ["tasks.lower.batch_size=5"]
    single = train(load_config(config, [*overrides, f"output_dir={world}/dp-{optimizer}-single"]), resume=False,
                   log=lambda _: None)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()),
                           "-m", "cgpo.trainer", str(config), *overrides, f"output_dir={world}/dp-{optimizer}-ranks"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]  # a divergence of the replicas would have raised
    ranks = metrics(world / f"dp-{optimizer}-ranks")
    assert [r["step"] for r in ranks] == [0, 1, 2, 3]  # 0: the initial policy, evaluated
    for a, b in zip(single, ranks, strict=True):
        keys = sorted(k for k in a if not k.startswith("time/"))
        assert keys == sorted(k for k in b if not k.startswith("time/"))
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-4, abs=1e-5)
    assert single[-1]["lower/used_fraction"] > 0  # the runs trained on something
    one, two = weights(world / f"dp-{optimizer}-single"), weights(world / f"dp-{optimizer}-ranks")
    initial = weights_of(world / "policy")
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-3
    # Adam normalises each update, so a weight whose gradient is ~0 can move by up to lr on rounding
    # noise alone (the gradient is summed in another order): nearly all weights agree to float precision,
    # and none differs by more than a small fraction of how far training moved the weights.
    diffs = torch.cat([(two[k] - one[k]).abs().flatten() for k in one])
    assert diffs.max().item() < 0.01 * moved
    assert (diffs < 1e-6).float().mean().item() > 0.999


def weights_of(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_shards_are_contiguous_cover_everything_and_differ_by_at_most_one():
    for n in (1, 5, 8, 13):
        for world_size in (1, 2, 3, 4):
            shards = [Dist(rank, world_size).shard(n) for rank in range(world_size)]
            assert shards[0][0] == 0 and shards[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
            sizes = [stop - start for start, stop in shards]
            assert max(sizes) - min(sizes) <= 1


def _replica(rank: int, port: int, perturb: bool, results: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist = Dist.from_env("cpu")
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        # each rank's gradient is its rank + 1: the all-reduced gradient is 1 + 2 = 3 everywhere
        for p in model.parameters():
            p.grad = torch.full_like(p, rank + 1.0)
        model.bias.grad = None if rank == 1 else model.bias.grad  # a missing gradient counts as zeros
        dist.all_reduce_grads(list(model.parameters()))
        outcome = {"weight_grad": model.weight.grad.unique().tolist(), "bias_grad": model.bias.grad.unique().tolist()}
        if perturb and rank == 1:
            with torch.no_grad():
                model.weight[0, 0] += 1e-6
        try:
            dist.check_in_sync(model)
            outcome["in_sync"] = True
        except RuntimeError as exc:
            outcome["in_sync"] = str(exc)
        (results / f"{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.close()


@pytest.mark.slow
@pytest.mark.parametrize("perturb", [False, True])
def test_gradients_are_summed_and_a_diverged_replica_is_caught(tmp_path, perturb):
    torch.multiprocessing.start_processes(_replica, args=(free_port(), perturb, tmp_path), nprocs=2,
                                          start_method="spawn")
    outcomes = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for outcome in outcomes:
        assert outcome["weight_grad"] == [3.0] and outcome["bias_grad"] == [1.0]
        if perturb:
            assert "diverged" in outcome["in_sync"]
        else:
            assert outcome["in_sync"] is True


OPTIMIZERS = ("crpg", "codpo", "crraft")


def sharded_batch(optimizer: str) -> TaskBatch:
    """Three prompts × K = 3 with judge errors and a cut response (masked), the last prompt with nothing
    to keep (CRRAFT falls back to its ā): ranks take 2 + 1 prompts."""
    task = make_task(optimizer, 3, kl_max=50.0, beta=0.5, lam=0.3, weight=0.7, on_truncation="mask")
    verdicts = ["pass", "error", "fail", "pass", "pass", "fail", "fail", "fail", "error"]
    rewards = [1.0, 3.0, -0.5, 0.4, 2.0, -1.0, 0.7, 0.2, 1.5]
    truncated = [False, False, False, False, True, False, False, False, False]
    return make_batch(task, [PROMPT, PROMPT[:3], PROMPT[1:]], responses(51, 9), rewards, verdicts, truncated,
                      responses(52, 3), [0.3, -0.4, 0.0], [True, True, True])


def shard(batch: TaskBatch, start: int, stop: int) -> TaskBatch:
    """Prompts [start, stop) of ``batch`` with their samples, as one rank generates and scores them."""
    k = batch.task.k
    rows = range(start * k, stop * k)
    r, s = batch.rollouts, batch.scores
    rollouts = Rollouts([r.prompt_index[i] - start for i in rows], [r.prompt_ids[i] for i in rows],
                        [r.response_ids[i] for i in rows], [r.text[i] for i in rows],
                        [r.sampling_logprobs[i] for i in rows], [r.finished[i] for i in rows])
    scores = TaskScores(*([getattr(s, f)[i] for i in rows] for f in ("verdicts", "reward", "baseline_reward",
                                                                     "calibrated")))
    return TaskBatch(batch.task, batch.prompt_ids[start:stop], rollouts, scores, batch.baseline_ids[start:stop],
                     batch.baseline_feasible[start:stop])


def _rank_update(rank: int, port: int, results: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist = Dist.from_env("cpu")
    try:
        policy, reference = tiny_pair()
        for optimizer in OPTIMIZERS:
            batch = sharded_batch(optimizer)
            policy.zero_grad()
            metrics, _ = task_update(policy, reference, shard(batch, *dist.shard(len(batch.prompt_ids))),
                                     temperature=1.0, micro_batch_size=2, dist=dist)
            dist.all_reduce_grads(list(policy.parameters()))
            torch.save({"grads": [p.grad for p in policy.parameters()], "metrics": metrics},
                       results / f"{rank}-{optimizer}.pt")
    finally:
        dist.close()


@pytest.mark.slow
def test_two_ranks_sum_to_the_methods_gradient_for_every_optimizer(tmp_path):
    # CRPG's batch mean, CODPO's pairs and CRRAFT's fallback are the whole batch's, not a shard's
    torch.multiprocessing.start_processes(_rank_update, args=(free_port(), tmp_path), nprocs=2,
                                          start_method="spawn")
    torch.set_num_threads(1)
    policy, reference = tiny_pair()
    for optimizer in OPTIMIZERS:
        batch = sharded_batch(optimizer)
        want = expected_grads(policy, batch, method_of(policy, reference, batch).coefficients)
        outcomes = [torch.load(tmp_path / f"{rank}-{optimizer}.pt") for rank in range(2)]
        for outcome in outcomes:
            assert_same_gradient(outcome["grads"], want)
        assert outcomes[0]["metrics"]["loss"] == outcomes[1]["metrics"]["loss"]


def test_collectives_use_the_gpu_under_nccl_and_the_cpu_under_gloo(monkeypatch):
    from cgpo.trainer import distributed

    monkeypatch.setattr(torch.distributed, "get_backend", lambda *_: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)  # NCCL takes no CPU tensors
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *_: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


def test_saving_sharded_state_before_the_first_step_leaves_adamw_untouched(tmp_path):
    from cgpo.trainer.checkpoint import TrainState, _save_shards

    policy, _ = tiny_pair()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    _save_shards(TrainState(policy, None, optimizer, None, {}, sharded=True), tmp_path / "dcp")
    assert not optimizer.state  # no zero step taken: the first real step's bias correction is one process's
