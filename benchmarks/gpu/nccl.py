"""The trainer under ``torchrun`` on this machine, and the process group it would open for data parallelism.

``trainer``: ``torchrun --standalone --nproc_per_node 1 -m cgpo.trainer CONFIG`` (the ``torchrun`` next to
this Python) on a tiny run — toy policy and reward model (``common.build_model`` at the dry run's size,
also on the GPU), one task without judges, 2 steps, a checkpoint at the end, ``device`` cuda on the GPU
and cpu in the dry run. Checked: the exit status is 0, ``metrics.jsonl`` has steps 1 and 2, and the
checkpoint holds the policy's weights, its config and the training state. Reported: the command's
wall-clock seconds. With one rank torchrun sets ``WORLD_SIZE=1``, and ``Dist.from_env``
(trainer/distributed.py) then joins no process group: that run is the single-process path under the
launcher.

``process_group``: what the trainer opens with more ranks, on one rank (a machine with one GPU cannot
hold two NCCL ranks): under ``torchrun --nproc_per_node 1``, the backend ``Dist.from_env`` chooses (NCCL
when the rank's device is CUDA, else gloo) is initialised, and the trainer's own collectives
(``Dist.all_reduce_grads``, ``gather``, ``check_in_sync``, ``barrier``, ``close``) run over it on a small
model's gradients — a one-rank sum must leave them unchanged. Reported: the backend the group reports,
NCCL's version, and the seconds to initialise the group and to run the collectives.

Timeouts: the trainer 45 s on the GPU, 120 s on the CPU; the probe 30 s and 60 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu.common import REPO, Context, build_model, guarded

STEPS = 2


def run(ctx: Context) -> dict[str, Any]:
    result: dict[str, Any] = {"launcher": " ".join(torchrun())}
    guarded("process_group", lambda: process_group(ctx), result)
    guarded("trainer", lambda: trainer(ctx), result)
    result["summary"] = summary(result)
    return result


def torchrun() -> list[str]:
    """The ``torchrun`` of this environment (its module when the script is missing)."""
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def launch(args: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node 1 ARGS`` in the repository, its output in ``log``; killed
    with its workers (one process group) past ``timeout`` seconds."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CGPO_")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    command = [*torchrun(), "--standalone", "--nproc_per_node", "1", *args]
    tic = time.perf_counter()
    with log.open("w") as output:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    out = {"exit_code": code, "seconds": round(time.perf_counter() - tic, 2)}
    if code is None:
        out["timed_out_after_s"] = timeout
    if code != 0:
        out["output_tail"] = log.read_text(errors="replace")[-3000:]
    return out


# ------------------------------------------------------------------ the trainer under torchrun


def trainer(ctx: Context) -> dict[str, Any]:
    from cgpo.trainer.checkpoint import STATE_FILE

    root = ctx.work / "nccl"
    config = write_run(ctx, root)
    out = root / "out"
    launched = launch(["-m", "cgpo.trainer", str(config)], ctx.size(45, 120), root / "trainer.log")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if line.strip()] if (out / "metrics.jsonl").is_file() else []
    checkpoint = out / "checkpoint"
    saved = sorted(p.name for p in checkpoint.iterdir()) if checkpoint.is_dir() else []
    checks = {"exit_0": launched["exit_code"] == 0, "metrics_steps": steps == list(range(1, STEPS + 1)),
              "checkpoint": {"config.json", STATE_FILE} <= set(saved)
              and any(name.endswith(".safetensors") for name in saved)}
    return {"ok": all(checks.values()), "checks": checks, "wall_s_command": launched["seconds"], "steps": steps,
            "checkpoint_files": saved, "process_group": "none: WORLD_SIZE=1, so Dist.from_env joins no group",
            **{k: v for k, v in launched.items() if k != "seconds"}}


def write_run(ctx: Context, root: Path) -> Path:
    """The tiny run's models, prompts and config under ``root`` (its output directory emptied)."""
    toy = Context(ctx.out, ctx.work, dry_run=True)  # toy models on every machine
    policy = build_model(toy, "tiny-policy")
    reward_model = build_model(toy, "tiny-rm", kind="sequence-classification")
    shutil.rmtree(root / "out", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    topics = ("the sea", "a bicycle", "Rome", "bread")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Write about {t}."}) + "\n" for t in topics))
    config = root / "run.yaml"
    config.write_text(f"""\
policy: {policy}
steps: {STEPS}
output_dir: {root / "out"}
device: {ctx.device}
checkpoint_every: 0
generation: {{max_new_tokens: 8}}
optim: {{lr: 1.0e-4, micro_batch_size: 8}}
tasks:
  - name: tiny
    prompts: {root / "prompts.jsonl"}
    reward_model: {{embedded: {reward_model}}}
    k: 2
    batch_size: 2
    on_truncation: keep
""")
    return config


# ------------------------------------------------------------------ the process group, on one rank


def process_group(ctx: Context) -> dict[str, Any]:
    root = ctx.work / "nccl"
    root.mkdir(parents=True, exist_ok=True)
    report = root / "process_group.json"
    report.unlink(missing_ok=True)
    launched = launch(["-m", "benchmarks.gpu.nccl", ctx.device, str(report)], ctx.size(30, 60),
                      root / "process_group.log")
    found = json.loads(report.read_text()) if report.is_file() else {}
    expected = "nccl" if ctx.device == "cuda" else "gloo"
    return {"ok": launched["exit_code"] == 0 and found.get("backend") == expected and found.get("sums_ok", False),
            "expected_backend": expected, **found, "wall_s_command": launched["seconds"],
            **{k: v for k, v in launched.items() if k != "seconds"}}


def probe(device: str, report: Path) -> None:
    """One rank's body (under torchrun): open the group as ``Dist.from_env`` would for several ranks, run
    the trainer's collectives on it, write what happened to ``report``."""
    import torch

    from cgpo.trainer.distributed import Dist, device_for

    class OneRankGroup(Dist):
        """A ``Dist`` whose collectives run although the world is one rank."""

        @property
        def enabled(self) -> bool:
            return True

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = device_for(device, local_rank)
    tic = time.perf_counter()
    if where.type == "cuda":
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group("nccl" if where.type == "cuda" else "gloo")
    dist = OneRankGroup(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank)
    init_s = time.perf_counter() - tic
    out: dict[str, Any] = {"backend": str(torch.distributed.get_backend()), "world_size": dist.world,
                           "init_s": round(init_s, 3)}
    if where.type == "cuda":
        version = torch.cuda.nccl.version()
        out["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    tic = time.perf_counter()
    out["sums_ok"] = collectives(dist, where)
    out["collectives_s"] = round(time.perf_counter() - tic, 3)
    dist.close()
    report.write_text(json.dumps(out))


def collectives(dist: Any, where: Any) -> bool:
    """The trainer's collectives on a small model's gradients; True when the one-rank sum changed nothing."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)).to(where)
    model(torch.randn(4, 64, device=where)).square().sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    dist.all_reduce_grads(list(model.parameters()))
    if where.type == "cuda":
        torch.cuda.synchronize()
    same = all(torch.equal(b, p.grad) for b, p in zip(before, model.parameters(), strict=True))
    gathered = dist.gather({"rank": dist.rank})
    dist.check_in_sync(model)
    dist.barrier()
    return same and gathered == [{"rank": dist.rank}]


def summary(result: dict[str, Any]) -> list[tuple[str, Any, str]]:
    group, run = result["process_group"], result["trainer"]
    rows: list[tuple[str, Any, str]] = []
    if "error" in group:
        rows.append(("process group (trainer's backend choice)", "error", ""))
    else:
        rows += [("process group backend, one rank", group.get("backend", "none"), ""),
                 ("process group: init / collectives", f"{group.get('init_s')} / {group.get('collectives_s')}", "s"),
                 ("process group check", "pass" if group["ok"] else "FAIL", "")]
    if "error" in run:
        rows.append(("torchrun -m cgpo.trainer", "error", ""))
    else:
        rows += [("torchrun -m cgpo.trainer, 2 steps + checkpoint", run["wall_s_command"], "s"),
                 ("torchrun trainer checks", "pass" if run["ok"] else "FAIL", "")]
    return rows


if __name__ == "__main__":
    probe(sys.argv[1], Path(sys.argv[2]))
