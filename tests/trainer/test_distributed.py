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
from tests.trainer.test_loop import world, write_config  # noqa: F401 - the fixture is used by name
from trainer.config import load_config
from trainer.distributed import Dist
from trainer.loop import train


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "checkpoint" / "model.safetensors")


def metrics(directory: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer", ["crraft", "codpo"])
def test_two_ranks_match_one_process_on_the_same_data(world, subprocess_env, optimizer):  # noqa: F811
    # batch_size 5 splits 3 + 2: uneven shards; CRRAFT also trains on baselines, CODPO on pairs
    config = write_config(world, f"dp-{optimizer}", optimizer, lr=1e-2, steps=3, eval_every=2)
    overrides = ["tasks.lower.batch_size=5"]
    single = train(load_config(config, [*overrides, f"output_dir={world}/dp-{optimizer}-single"]), resume=False,
                   log=lambda _: None)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "trainer",
                           str(config), *overrides, f"output_dir={world}/dp-{optimizer}-ranks"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]  # a divergence of the replicas would have raised
    ranks = metrics(world / f"dp-{optimizer}-ranks")
    assert [r["step"] for r in ranks] == [1, 2, 3]
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
