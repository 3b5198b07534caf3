"""Held-out evaluation of the policy (``eval/TASK/...`` metrics and ``eval_samples/*.jsonl``).

One sample per held-out prompt, drawn with ``generation.for_eval()`` (e.g. greedy): the share that
passes every judge, each judge's pass and error rate, raw and calibrated reward (under
``eval_reward_model`` when set; then also under the task's own reward model, as
``eval/TASK/task_rm/...``), the share cut at the length limit, for tasks judged by ``instructions``
IFEval's four accuracies (``eval/TASK/ifeval/prompt_strict`` ...), and the KL:

``eval/TASK/kl`` estimates KL(π_w ‖ π_ref) on the held-out prompts as the mean sequence log-ratio
ρ = log π_w(a|s) − log π_ref(a|s), both at the training temperature, over one response a per prompt
drawn from π_w with the *training* generation settings (temperature, top-p, max_new_tokens): the
evaluation's own responses when it samples with those settings, else one more sample per prompt
(greedy responses are not draws from π_w, so their ρ is no KL). At top-p 1, E[ρ] is exactly the
sequence-level KL that CRPG's and CRRAFT's KL_max bound; one sample's ρ can be negative, and
``eval/TASK/kl_stderr`` is the estimate's standard error.

Each rank evaluates its share of the prompts; the results are gathered, so every rank returns the
metrics of the whole eval set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from cgpo.precision import autocast
from cgpo.trainer.config import GenerationConfig, TaskConfig
from cgpo.trainer.data import Prompt, render
from cgpo.trainer.ifeval import JUDGE as IFEVAL_JUDGE
from cgpo.trainer.ifeval import followed as ifeval_followed
from cgpo.trainer.ifeval import from_followed as ifeval_accuracies
from cgpo.trainer.logprobs import eval_mode, sequence_logprobs
from cgpo.trainer.rollout import Rollouts, rollout_seed
from cgpo.trainer.scoring import ScoringWork, TaskScores
from cgpo.trainer.setup import Run


@dataclass
class Shard:
    """This rank's part of one task's held-out prompts and what the policy answered."""

    task: TaskConfig
    prompts: list[Prompt]
    first: int
    """Index of ``prompts[0]`` in the task's eval set."""
    rollouts: Rollouts | None = None
    kl_rollouts: Rollouts | None = None
    """Draws from π_w with the training settings (the KL's samples)."""


def evaluate_policy(run: Run, step: int, samples_file: str | None = None, kl: bool = True) -> dict[str, float]:
    """The held-out metrics of the current policy (see the module docstring); ``kl=False`` skips the KL
    (no ``eval/TASK/kl`` key). Rank 0 writes what the policy wrote to ``eval_samples/``."""
    eval_prompts = run.data.eval_prompts
    shards = {}
    for t in run.config.tasks:
        if t.name in eval_prompts:
            first, stop = run.dist.shard(len(eval_prompts[t.name]))
            shards[t.name] = Shard(t, eval_prompts[t.name][first:stop], first)
    if not shards:
        return {}
    generate(run, step, list(shards.values()), kl)
    scores, own = score(run, shards)
    record: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    for name, shard in shards.items():
        record.update(task_record(run, shard, scores[name], own.get(name), kl, samples))
    if run.dist.main:  # what the policy wrote, for reading next to the numbers
        path = run.config.out / "eval_samples" / (samples_file or f"step-{step + 1}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in samples))
        if run.metrics is not None:
            run.metrics.samples("eval", step + 1 if samples_file is None else 0, samples)
    return record


def generate(run: Run, step: int, shards: list[Shard], kl: bool) -> None:
    """Each shard's evaluation responses and, when the KL needs other draws, its KL samples."""
    config = run.config
    train_gen, eval_gen = config.generation, config.generation.for_eval()
    with autocast(config.precision, run.models.policy):
        for i, shard in enumerate(shards):
            ids = [render(run.models.tokenizer, p) for p in shard.prompts]
            shard.rollouts = run.engine.with_generation(eval_gen).generate(
                ids, 1, seed=rollout_seed(config.seed + 1, step, i), prompt_offset=shard.first)
            shard.kl_rollouts = shard.rollouts
            if kl and _sampling(eval_gen) != _sampling(train_gen):  # draws from π_w, as in training
                shard.kl_rollouts = run.engine.with_generation(train_gen).generate(
                    ids, 1, seed=rollout_seed(config.seed + 2, step, i), prompt_offset=shard.first)


def score(run: Run, shards: dict[str, Shard]) -> tuple[dict[str, TaskScores], dict[str, TaskScores]]:
    """The shards' scores under the yardstick (``eval_reward_model``, else each task's own reward model)
    and, when the yardstick is another model, under the task's own reward model too: the monitor
    watches the reward each task optimizes."""
    yardstick = run.config.eval_reward_model

    def work(shard: Shard, task: TaskConfig) -> ScoringWork:
        r = shard.rollouts
        baselines = [run.baselines[shard.task.name][p.id].text for p in shard.prompts]
        return ScoringWork(task, shard.prompts, r.text, r.prompt_index, baselines)

    scores = run.scorer.score({name: work(s, s.task if yardstick is None else s.task.model_copy(
        update={"reward_model": yardstick})) for name, s in shards.items()})
    own = run.scorer.score({name: work(s, s.task.model_copy(update={"judges": []})) for name, s in shards.items()
                            if yardstick is not None and s.task.reward_model != yardstick})
    return scores, own


def task_record(run: Run, shard: Shard, scores: TaskScores, own: TaskScores | None, kl: bool,
                samples: list[dict[str, Any]]) -> dict[str, float]:
    """One task's ``eval/TASK/...`` metrics over every rank's shard; its samples appended to ``samples``."""
    t, r = shard.task, shard.rollouts
    log_ratio = _log_ratios(run, shard.kl_rollouts) if kl else []
    followed = None  # IFEval's flags: each rank judges its own share
    if IFEVAL_JUDGE in t.judges:
        followed = run.scorer.run(ifeval_followed(run.scorer.services.judges(t), shard.prompts, r.text))
    parts = run.dist.gather((scores, log_ratio, r.text, r.finished, own, followed))
    s = TaskScores.concat([p[0] for p in parts])
    log_ratio = sum((p[1] for p in parts), [])
    texts = sum((p[2] for p in parts), [])
    finished = sum((p[3] for p in parts), [])
    prefix, record = f"eval/{t.name}", {}
    if own is not None:
        mine = TaskScores.concat([p[4] for p in parts])
        record.update({f"{prefix}/task_rm/reward": _mean(mine.reward),
                       f"{prefix}/task_rm/calibrated_reward": _mean(mine.calibrated)})
    eval_prompts = run.data.eval_prompts[t.name]
    samples += _sample_rows(t.name, eval_prompts, texts, s, finished)
    record.update({f"{prefix}/pass_rate": _mean(s.feasible), f"{prefix}/reward": _mean(s.reward),
                   f"{prefix}/calibrated_reward": _mean(s.calibrated),
                   f"{prefix}/truncated_rate": _mean([not f for f in finished])})
    if kl:
        record[f"{prefix}/kl"] = _mean(log_ratio)
        record[f"{prefix}/kl_stderr"] = _stderr(log_ratio)
    for judge, rate in s.judge_rates().items():
        record[f"{prefix}/judge/{judge}/pass_rate"] = rate["pass_rate"]
        record[f"{prefix}/judge/{judge}/error_rate"] = rate["error_rate"]
    if followed is not None:
        flags = {mode: sum((p[5][mode] for p in parts), []) for mode in followed}
        accuracy = ifeval_accuracies(flags)
        record.update({f"{prefix}/ifeval/{key}": value for key, value in accuracy.items()})
    return record


def _sampling(generation: GenerationConfig) -> tuple[float, float, int]:
    """What the distribution of a drawn response depends on."""
    return generation.temperature, generation.top_p, generation.max_new_tokens


def _log_ratios(run: Run, rollouts: Rollouts) -> list[float]:
    """ρ = log π_w(a|s) − log π_ref(a|s) of each response, at the training temperature, dropout off."""
    config, policy, reference = run.config, run.models.policy, run.models.reference
    temperature, size = config.generation.temperature, config.optim.micro_batch_size
    lockstep = run.dist if run.dist.sharded else None
    with torch.no_grad(), eval_mode(policy), autocast(config.precision, policy):
        logp = sequence_logprobs(policy, rollouts.prompt_ids, rollouts.response_ids, temperature, size,
                                 lockstep).logprobs
        ref = sequence_logprobs(reference, rollouts.prompt_ids, rollouts.response_ids, temperature, size,
                                lockstep).logprobs
    return (logp - ref).tolist()


def _stderr(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (0 for fewer than two)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def _sample_rows(task: str, prompts: list[Prompt], texts: list[str], scores: TaskScores,
                 finished: list[bool]) -> list[dict[str, Any]]:
    """One task's evaluation samples (one per prompt) with their verdicts and rewards."""
    details = scores.details or [{} for _ in texts]
    return [{"task": task, "id": p.id, "prompt": p.text, "response": text, "verdicts": verdicts,
             "feasible": all(v == "pass" for v in verdicts.values()), "reward": reward, "calibrated_reward": cal,
             "truncated": not done, "details": found}
            for p, text, verdicts, reward, cal, done, found in zip(prompts, texts, scores.verdicts, scores.reward,
                                                                   scores.calibrated, finished, details, strict=True)]


def _mean(values: list[Any]) -> float:
    return sum(float(v) for v in values) / len(values) if values else 0.0
