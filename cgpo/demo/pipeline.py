"""``cgpo demo``: build the world, train the SFT policy and the reward models, run the comparison.

1. World (cached in ``OUT/world`` and reused while its recipe is unchanged): prompt files per task
   (RL and held-out eval), a word-level tokenizer, the SFT policy, a helpfulness RM and a safety RM
   trained on the simulated annotators' preference pairs (cgpo/demo/world.py).
2. Runs, same start (the SFT policy), same budget (steps, K, prompts per step, learning rate), per seed:
   ``baseline`` — RM-only policy gradient, the helpfulness RM for every task, judges measured but ignored
   (the paper's PPO setting); ``crpg``, ``codpo``, ``crraft`` — CGPO with per-task RMs (the safety RM
   for harmful prompts), judges and settings. Runs execute in parallel worker processes.
3. Evaluation of every policy on the held-out prompts with one common yardstick: the judges, and the
   helpfulness RM — the reward the baseline maximises — on every task (``eval_reward_model``), before
   step 1 (the SFT start, the same in every run), every ``eval_every`` steps and at the end. The
   trainer's reward-hacking monitor (trainer/monitor.py, default settings) watches every run.
4. ``results.json``, ``curves.png``, ``report.md`` (cgpo/demo/report.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cgpo.demo import world as W

RUNS = ("baseline", "crpg", "codpo", "crraft")
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Budget:
    """Everything that sizes the demo; ``quick`` is the pipeline check that runs in the test suite."""

    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 40
    k: int = 4
    batch_size: int = 6
    lr: float = 1e-3
    eval_every: int = 10
    n_eval: int = 50
    n_rl: int = 70
    sft_examples: int = 1500
    sft_steps: int = 600
    rm_pairs: int = 600
    rm_epochs: int = 2
    max_new_tokens: int = 48
    hidden_size: int = 64

    @classmethod
    def quick(cls) -> Budget:
        return cls(seeds=(0,), steps=3, eval_every=3, n_eval=6, n_rl=12, sft_examples=200, sft_steps=30,
                   rm_pairs=60, rm_epochs=1, max_new_tokens=40)

    def world_recipe(self) -> dict[str, Any]:
        """What the cached world depends on."""
        keys = ("n_eval", "n_rl", "sft_examples", "sft_steps", "rm_pairs", "rm_epochs", "hidden_size")
        return {"version": RECIPE_VERSION, **{k: getattr(self, k) for k in keys}}


# --------------------------------------------------------------------------------------------- world


def build_world(root: Path, budget: Budget, log: Any = print) -> dict[str, Any]:
    """Prompt files, SFT policy and reward models under ``root``; reused when the recipe matches."""
    manifest_path = root / "manifest.json"
    recipe = budget.world_recipe()
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("recipe") == recipe:
            log(f"world: reusing {root}")
            return manifest
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    import torch

    from cgpo.demo.models import build_model, build_tokenizer, save, sft
    from cgpo.services.rm.train import TrainConfig, train_reward_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    _quiet()
    items = W.build_items(seed=0)
    split = {task: W.split_items(rows, budget.n_eval, budget.n_rl) for task, rows in items.items()}
    for task, s in split.items():
        _write_jsonl(root / "prompts" / f"{task}.jsonl", [i.row() for i in s.rl])
        _write_jsonl(root / "eval" / f"{task}.jsonl", [i.row() for i in s.eval])
    tokenizer = build_tokenizer(W.corpus(items) + [" ".join(str(n) for n in range(-5, 30)),
                                                   " ".join(f"{n}." for n in range(-5, 30))])
    log(f"world: {sum(len(s.rl) for s in split.values())} RL prompts, "
        f"{sum(len(s.eval) for s in split.values())} held out, vocabulary {len(tokenizer)}")

    policy = build_model(tokenizer, hidden_size=budget.hidden_size)
    examples = W.sft_examples(split, budget.sft_examples // len(W.TASKS), seed=0)
    losses = sft(policy, tokenizer, examples, steps=budget.sft_steps, log=log)
    save(policy, tokenizer, root / "sft")
    log(f"world: SFT policy trained ({budget.sft_steps} steps, final loss {losses[-1]:.3f})")

    save(build_model(tokenizer, kind="sequence-classification", hidden_size=budget.hidden_size, seed=1),
         tokenizer, root / "rm-base")
    reports = {}
    for name, rank in (("helpful", W.HELPFUL_RANK), ("safety", W.SAFETY_RANK)):
        pairs = W.preference_pairs(split, rank, budget.rm_pairs // len(rank), seed=1)
        _write_jsonl(root / "preferences" / f"{name}.jsonl", pairs)
        report = train_reward_model(TrainConfig(
            base=str(root / "rm-base"), data=str(root / "preferences" / f"{name}.jsonl"), out=str(root / f"rm-{name}"),
            epochs=budget.rm_epochs, lr=2e-3, batch_size=16, max_length=160, eval_fraction=0.1, seed=0,
            device="cpu"), log=None)
        reports[name] = {"pairs": len(pairs), "before": report["eval_before"], "after": report["eval_after"]}
        log(f"world: {name} RM trained on {len(pairs)} pairs; held-out accuracy "
            f"{_accuracy(report, 'before'):.2f} -> {_accuracy(report, 'after'):.2f}")
    manifest = {"recipe": recipe, "vocabulary": len(tokenizer), "sft_final_loss": losses[-1], "rm": reports,
                "seconds": round(time.monotonic() - started, 1)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def _quiet() -> None:
    """No per-file progress bars from transformers while loading and saving the small models."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _accuracy(report: dict[str, Any], when: str) -> float:
    return float((report.get(f"eval_{when}") or {}).get("accuracy", float("nan")))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------- runs


TASK_SETTINGS: dict[str, dict[str, Any]] = {
    # CGPO's per-task choices: reward model, and the optimizer's KL budget
    "math": {"rm": "helpful", "kl_max": 20.0},
    "instructions": {"rm": "helpful", "kl_max": 20.0},
    "harmful": {"rm": "safety", "kl_max": 20.0},
    "benign": {"rm": "helpful", "kl_max": 20.0},
}


def run_config(world: Path, out: Path, kind: str, seed: int, budget: Budget) -> dict[str, Any]:
    """The trainer config of one run (``kind`` in RUNS) as a dict, ready for YAML."""
    tasks = []
    for task in W.TASKS:
        settings = TASK_SETTINGS[task]
        tasks.append({
            "name": task, "prompts": str(world / "prompts" / f"{task}.jsonl"),
            "eval_prompts": str(world / "eval" / f"{task}.jsonl"),
            "reward_model": {"embedded": str(world / f"rm-{settings['rm']}")}, "judges": W.JUDGES[task],
            "optimizer": "crpg" if kind == "baseline" else kind, "k": budget.k, "batch_size": budget.batch_size,
            "kl_max": settings["kl_max"], "beta": 0.1, "lam": 0.5})
    config: dict[str, Any] = {
        "policy": str(world / "sft"), "steps": budget.steps, "seed": seed, "output_dir": str(out),
        "eval_every": budget.eval_every, "checkpoint_every": 0, "device": "cpu",
        "generation": {"engine": "hf", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": budget.max_new_tokens},
        "optim": {"lr": budget.lr, "schedule": "constant", "grad_clip": 1.0, "micro_batch_size": 32},
        "tasks": tasks,
        # one yardstick for every run's held-out evaluation: the reward the baseline maximises
        "eval_reward_model": {"embedded": str(world / "rm-helpful")}}
    if kind == "baseline":
        config["unconstrained_baseline"] = True
        config["unified_reward_model"] = {"embedded": str(world / "rm-helpful")}
    return config


def _job(kind: str, seed: int, world: str, out: str, budget: dict[str, Any]) -> dict[str, Any]:
    """One training run in a worker process. Returns its metric records (the first one, step 0, is the
    SFT start's evaluation), the final held-out evaluation and the monitor's warnings."""
    import torch

    torch.set_num_threads(1)
    _quiet()
    from cgpo.trainer.config import build_config
    from cgpo.trainer.loop import train

    b = Budget(**{**budget, "seeds": tuple(budget["seeds"])})
    started = time.monotonic()
    warnings: list[str] = []
    records = train(build_config(run_config(Path(world), Path(out), kind, seed, b)), resume=False,
                    log=lambda line: warnings.append(line) if line.startswith("WARNING") else None)
    final = {k: v for k, v in records[-1].items() if k.startswith("eval/")}
    return {"kind": kind, "seed": seed, "records": records, "final": final, "warnings": warnings,
            "seconds": round(time.monotonic() - started, 1)}


def run_all(out: Path, budget: Budget, jobs: int, log: Any = print) -> list[dict[str, Any]]:
    """Every (run, seed), ``jobs`` at a time, and per seed the SFT start (every run's step-0 evaluation)."""
    world = out / "world"
    work = [(kind, seed) for seed in budget.seeds for kind in RUNS]
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_job, kind, seed, str(world), str(out / "runs" / f"{kind}-{seed}"), asdict(budget))
                   for kind, seed in work]
        for future in futures:
            result = future.result()
            log(f"run {result['kind']:>8} seed {result['seed']}: done in {result['seconds']:.0f} s")
            results.append(result)
    for seed in budget.seeds:  # same policy, prompts, seed and yardstick in every run: take CRPG's
        start = next(r for r in results if r["kind"] == "crpg" and r["seed"] == seed)["records"][0]
        assert start["step"] == 0, "the runs evaluate the SFT start before step 1"
        results.append({"kind": "sft", "seed": seed, "records": [], "warnings": [], "seconds": 0.0,
                        "final": {k: v for k, v in start.items() if k.startswith("eval/")}})
    return results
