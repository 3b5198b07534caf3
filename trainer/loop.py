"""The CGPO training loop (docs/method.md §5): sample → generate → score → select + loss per task → one
step → log / evaluate / checkpoint.

Everything the loop uses is set up by trainer/setup.py as one ``Run``; this module is the algorithm.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgpo.precision import autocast
from cgpo.trainer.baselines import Baseline, baseline_feasible, rates
from cgpo.trainer.checkpoint import save_checkpoint
from cgpo.trainer.config import RunConfig, TaskConfig
from cgpo.trainer.data import Prompt, render
from cgpo.trainer.evaluation import evaluate_policy
from cgpo.trainer.preflight import TaskHealth, preflight
from cgpo.trainer.rollout import Rollouts, rollout_seed
from cgpo.trainer.scoring import ScoringWork, TaskScores
from cgpo.trainer.setup import Run, evaluation_run, require_engine, training_run, with_resolved_models
from cgpo.trainer.step import TaskBatch, task_update


def train(config: RunConfig, *, resume: bool = True, log: Any = print) -> list[dict[str, float]]:
    """Run (or resume) training; returns the metric records written to ``metrics.jsonl``: one per step,
    after a first one (``step`` 0) evaluating the initial policy when the tasks have eval prompts and the
    reward-hacking monitor watches held-out evaluations (the default; trainer/monitor.py).

    Under ``torchrun`` every rank runs this; rank 0 writes metrics, logs and checkpoints
    (trainer/distributed.py).
    """
    require_engine(config)
    preflight(config)  # before any model loads or any file is written
    with training_run(with_resolved_models(config), resume=resume, log=log) as run:
        return run_training(run)


def run_training(run: Run) -> list[dict[str, float]]:
    """The loop itself: from the run's start to ``steps``, or until the monitor stops it."""
    config, records = run.config, []
    if run.start == 0 and run.monitor.evaluates_start and run.data.eval_prompts:  # the held-out windows' first point
        record = {"step": 0, **evaluate_policy(run, 0, samples_file="step-0.jsonl", kl=False)}
        run.monitor.observe(record)
        records.append(record)
        run.metrics.write(record, advance=False)
        run.log("evaluated the initial policy (step 0)")
    baseline_rates = {f"{t.name}/baseline/{key}": value for t in config.tasks for key, value in
                      rates(t, [run.baselines[t.name][p.id] for p in run.data.prompts[t.name]]).items()}
    health = TaskHealth()
    for step in range(run.start, config.steps):
        record = {**train_step(run, step), **baseline_rates}
        last = step + 1 == config.steps
        if config.eval_every and (step + 1) % config.eval_every == 0 or last:
            record.update(evaluate_policy(run, step))
        for warning in health.observe(config.tasks, record):
            run.log(warning)
        stop = watch(run, record)
        records.append(record)
        run.metrics.write(record)
        run.log(progress_line(config, record))
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 or last or stop:
            checkpoint(run, step + 1)
        if stop:  # every rank saw the same record, so every rank stops here
            run.log(f"stopped at step {step + 1} (monitor.action: stop); checkpoint in {run.checkpoint_dir}")
            break
    return records


def train_step(run: Run, step: int) -> dict[str, float]:
    """One stratified CGPO step over every task; returns the step's metrics (the whole batch's).

    Every rank draws the same batches; each generates and scores its contiguous share of each task's
    prompts, with the sampling seed of their place in the whole batch.
    """
    config, times, tic = run.config, Times(), time.perf_counter()
    with times("generate"):
        batches = {t.name: draw(run, step, i) for i, t in enumerate(config.tasks)}
    with times("score"):
        scores = run.scorer.score({name: b.work for name, b in batches.items()})
    keep_samples(run, step, batches, scores)
    with times("update"):
        run.optimizer.zero_grad(set_to_none=True)
        record: dict[str, float] = {"step": step + 1, "lr": run.scheduler.get_last_lr()[0]}
        for t in config.tasks:
            record.update(accumulate(run, batches[t.name].task_batch(scores[t.name]), times))
        record.update(optimizer_step(run))
    seconds = time.perf_counter() - tic
    tokens = sum(run.dist.gather(sum(len(p) + len(r) for b in batches.values()
                                     for p, r in zip(b.rollouts.prompt_ids, b.rollouts.response_ids))))
    return {**record, **times.record(), "time/step_s": seconds, "time/tokens_per_s": tokens / seconds}


def keep_samples(run: Run, step: int, batches: dict[str, Drawn], scores: dict[str, TaskScores]) -> None:
    """Rank 0 keeps its first ``log_samples`` rollouts of each task (``train_samples/step-N.jsonl`` and the
    trackers' tables): prompt, response, verdicts with each judge's detail, rewards, whether it was cut."""
    count = run.config.log_samples
    if not count or not run.dist.main:
        return
    rows = []
    for name, batch in batches.items():
        r, s = batch.rollouts, scores[name]
        details = s.details or [{} for _ in r.text]
        for i in range(min(count, len(r.text))):
            rows.append({"task": name, "prompt": batch.prompts[r.prompt_index[i]].text, "response": r.text[i],
                         "verdicts": s.verdicts[i], "feasible": all(v == "pass" for v in s.verdicts[i].values()),
                         "reward": s.reward[i], "calibrated_reward": s.calibrated[i],
                         "truncated": not r.finished[i], "details": details[i]})
    path = run.config.out / "train_samples" / f"step-{step + 1}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if run.metrics is not None:
        run.metrics.samples("train", step + 1, rows)


@dataclass(frozen=True)
class Drawn:
    """One task's share of a step: its prompts, rendered, their baselines and the policy's rollouts."""

    task: TaskConfig
    prompts: list[Prompt]
    prompt_ids: list[list[int]]
    baselines: list[Baseline]
    rollouts: Rollouts

    @property
    def work(self) -> ScoringWork:
        r = self.rollouts
        return ScoringWork(self.task, self.prompts, r.text, r.prompt_index, [b.text for b in self.baselines])

    def task_batch(self, scores: TaskScores) -> TaskBatch:
        return TaskBatch(self.task, self.prompt_ids, self.rollouts, scores, [b.ids for b in self.baselines],
                         [baseline_feasible(self.task, b) for b in self.baselines])


def draw(run: Run, step: int, index: int) -> Drawn:
    """Task ``index``'s next batch (this rank's share) and K rollouts per prompt from the policy."""
    task = run.config.tasks[index]
    whole = next(run.data.samplers[task.name])
    first, stop = run.dist.shard(len(whole))
    prompts = whole[first:stop]
    ids = [render(run.models.tokenizer, p) for p in prompts]
    with autocast(run.config.precision, run.models.policy):
        rollouts = run.engine.generate(ids, task.k, seed=rollout_seed(run.config.seed, step, index),
                                       prompt_offset=first)
    return Drawn(task, prompts, ids, [run.baselines[task.name][p.id] for p in prompts], rollouts)


def accumulate(run: Run, batch: TaskBatch, times: Times) -> dict[str, float]:
    """The task's select + loss, its gradient accumulated (scaled by its weight); the task's metrics."""
    config = run.config
    with autocast(config.precision, run.models.policy):
        metrics, passes = task_update(run.models.policy, run.models.reference, batch,
                                      temperature=config.generation.temperature,
                                      micro_batch_size=config.optim.micro_batch_size,
                                      unconstrained=config.unconstrained_baseline, dist=run.dist)
    times.add(passes)
    return {f"{batch.task.name}/{key}": value for key, value in metrics.items()}


def optimizer_step(run: Run) -> dict[str, float]:
    """One step on the gradients every task accumulated (summed over the ranks), then the engine's
    weights follow the policy's."""
    policy, out = run.models.policy, {}
    run.dist.all_reduce_grads(list(policy.parameters()))
    if run.config.optim.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), run.config.optim.grad_clip)
        out["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded: a DTensor
    run.optimizer.step()
    run.scheduler.step()
    run.engine.sync_weights(policy)
    return out


def watch(run: Run, record: dict[str, float]) -> bool:
    """The reward-hacking monitor's scores into ``record``, its alerts logged; True when it stops the run."""
    scores, alerts = run.monitor.observe(record)
    record.update(scores)
    for alert in alerts:
        run.log(alert.message(run.config.monitor.threshold))
    return bool(alerts) and run.config.monitor.action == "stop"


def checkpoint(run: Run, step: int) -> None:
    """Rank 0 saves the run's state at ``step``, once every rank holds the same weights."""
    run.dist.check_in_sync(run.models.policy)
    save_checkpoint(run.checkpoint_dir, step, run.state, run.dist)  # rank 0 writes; every rank its shards
    run.dist.barrier()


def eval_checkpoint(config: RunConfig, checkpoint: Path | None = None, kl: bool = True,
                    log: Any = print) -> dict[str, float]:
    """Evaluate a saved policy on the tasks' eval prompts (``cgpo eval``); without a checkpoint, the
    initial policy itself (the numbers before training; it is π_ref, so its KL is not computed).
    ``kl=False`` skips the KL estimate (a sample per prompt and two forward passes over each): the
    record then has no ``eval/TASK/kl``."""
    preflight(config, training=False)
    with evaluation_run(with_resolved_models(config), checkpoint, log) as run:
        name = checkpoint.name if checkpoint is not None else "initial"
        return evaluate_policy(run, 0, samples_file=f"{name}.jsonl", kl=kl and checkpoint is not None)


class Times:
    """Wall-clock seconds per phase of a step (``time/PHASE_s``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"logprobs": 0.0, "backward": 0.0}

    @contextmanager
    def __call__(self, phase: str) -> Any:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - tic

    def add(self, seconds: dict[str, float]) -> None:
        for phase, s in seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + s

    def record(self) -> dict[str, float]:
        return {f"time/{phase}_s": s for phase, s in self.seconds.items()}


def progress_line(config: RunConfig, record: dict[str, float]) -> str:
    """The step's line on the console, and a second one with the held-out evaluation when it ran."""
    parts = [f"step {int(record['step'])}/{config.steps}"]
    for t in config.tasks:
        parts.append(f"{t.name}: feasible {record[f'{t.name}/feasible_rate']:.2f} "
                     f"reward {record[f'{t.name}/reward']:+.3f} kl {record[f'{t.name}/kl']:+.3f}")
    line = " | ".join(parts)
    evaluated = [t for t in config.tasks if f"eval/{t.name}/pass_rate" in record]
    if evaluated:
        line += "\n  eval: " + " | ".join(_eval_part(t.name, record) for t in evaluated)
    return line


def _eval_part(task: str, record: dict[str, float]) -> str:
    part = f"{task}: pass {record[f'eval/{task}/pass_rate']:.3f} reward {record[f'eval/{task}/reward']:+.3f}"
    if f"eval/{task}/kl" in record:
        part += f" kl {record[f'eval/{task}/kl']:+.3f}"
    if f"eval/{task}/ifeval/prompt_strict" in record:
        part += f" ifeval prompt-strict {record[f'eval/{task}/ifeval/prompt_strict']:.3f}"
    return part
