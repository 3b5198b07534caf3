"""What each rank holds, and how long a step takes, with ddp, fsdp and LoRA on 1 and 2 CPU ranks.

The run is the sharded-training tests' multi-task run (tests/trainer/test_fsdp.py ``three_tasks``: a
tiny Llama policy, one task per optimizer — CRPG, CODPO, CRRAFT —, batch 3 × K 4, 8 new tokens, one
sequence per pass) for 4 steps, under each mode:

* ``ddp``: whole replicas (1 rank: one process);
* ``fsdp``: FSDP2 shards (1 rank: a group of one);
* ``lora-ddp`` / ``lora-fsdp``: the same with LoRA adapters (r 8, every linear of a layer).

Per rank, just before the optimizer step of step 3 (gradients summed, AdamW state present): the bytes of
the policy's parameters (this rank's shards: ``to_local()``), of the reference's (none with LoRA: the base
with the adapters off), of the gradients and of AdamW's ``exp_avg`` and ``exp_avg_sq``. Step time: the
mean of steps 2–4 (the first pays warm-up), all ranks stepping together.

    .venv/bin/python benchmarks/bench_sharding.py          # every mode on 1 and 2 ranks; prints the table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {"ddp": ["parallel=ddp"], "fsdp": ["parallel=fsdp"],
         "lora-ddp": ["parallel=ddp", "lora={r: 8, alpha: 16}"],
         "lora-fsdp": ["parallel=fsdp", "lora={r: 8, alpha: 16}"]}
STEPS = 4
MEASURED_STEP = 3


def local_bytes(tensors: Any) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def held(run: Any) -> dict[str, int]:
    """This rank's bytes of parameters, reference, gradients and optimizer state."""
    policy, reference = run.models.policy, run.models.reference
    trained = [p for p in policy.parameters() if p.requires_grad]
    separate = isinstance(reference, __import__("torch").nn.Module)  # LoRA: the policy itself
    return {"parameters": local_bytes(policy.parameters()),
            "reference": local_bytes(reference.parameters()) if separate else 0,
            "gradients": local_bytes(p.grad for p in trained if p.grad is not None),
            "optimizer": local_bytes(t for p in trained for k, t in run.optimizer.state.get(p, {}).items()
                                     if k != "step")}


def rank_main(config: Path, overrides: list[str], out: Path) -> None:
    """One rank's run: the steps, timed, and what it holds at ``MEASURED_STEP``."""
    import torch

    from cgpo.trainer.config import load_config
    from cgpo.trainer.loop import train_step
    from cgpo.trainer.setup import training_run

    torch.set_num_threads(1)
    with training_run(load_config(config, overrides), resume=False, log=lambda _: None) as run:
        measured: dict[str, int] = {}
        step_optimizer = run.optimizer.step

        def step_and_measure(*args: Any, **kwargs: Any) -> Any:
            if run.scheduler.last_epoch + 1 == MEASURED_STEP:
                measured.update(held(run))
            return step_optimizer(*args, **kwargs)

        run.optimizer.step = step_and_measure
        seconds = []
        for step in range(STEPS):
            run.dist.barrier()
            start = time.perf_counter()
            train_step(run, step)
            seconds.append(time.perf_counter() - start)
        rows = run.dist.gather({"held": measured, "step_s": statistics.mean(seconds[1:])})
        if run.dist.main:
            out.write_text(json.dumps(rows))


def launch(config: Path, mode: str, ranks: int, out: Path) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGPO_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    me = [str(Path(__file__).resolve()), "--rank", str(config), str(out), *MODES[mode]]
    if ranks == 1:
        command = [sys.executable, *me]
    else:
        from tests.conftest import free_port

        command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(ranks),
                   "--master_port", str(free_port()), *me]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} on {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", nargs="+", help=argparse.SUPPRESS)  # CONFIG OUT OVERRIDES...: one rank's run
    args = parser.parse_args()
    if args.rank:
        rank_main(Path(args.rank[0]), args.rank[2:], Path(args.rank[1]))
        return
    from tests.trainer.test_fsdp import three_tasks
    from tests.worlds import make_world

    root = Path(tempfile.mkdtemp(prefix="cgpo-sharding-"))
    world = make_world(root / "world")
    print("| mode | ranks | parameters | reference | gradients | AdamW state | total per rank | step s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in MODES:
        for ranks in (1, 2):
            config = three_tasks(world, f"{mode}-{ranks}", steps=STEPS)
            rows = launch(config, mode, ranks, root / f"{mode}-{ranks}.json")
            top = max(rows, key=lambda r: sum(r["held"].values()))["held"]  # the rank holding the most
            kib = {k: v / 1024 for k, v in top.items()}
            print(f"| {mode} | {ranks} | {kib['parameters']:.1f} KiB | {kib['reference']:.1f} KiB | "
                  f"{kib['gradients']:.1f} KiB | {kib['optimizer']:.1f} KiB | {sum(kib.values()):.1f} KiB | "
                  f"{max(r['step_s'] for r in rows):.2f} |", flush=True)


if __name__ == "__main__":
    main()
