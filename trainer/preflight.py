"""Pre-flight checks: what a run needs that can be checked before any model loads (``cgpo train``,
``cgpo eval``).

A run that would fail later — minutes into loading models, or silently, training on nothing — fails here
instead, before anything is written, with one line per problem naming the field:

* every task's judges exist (embedded: the judges this package has; a judge service: the judges it
  lists at ``GET /v1/judges``);
* its prompt files parse, and every prompt carries the metadata each of its judges requires
  (``REQUIRED_METADATA``, e.g. ``answer`` for ``math``: without it every sample is a judge error and
  the task trains on nothing);
* every reward model is one: an embedded path holds a sequence-classification model (a trained score
  head, as ``cgpo rm train`` writes), not a causal LM whose head would be random; a service lists the
  named model at ``GET /v1/models``;
* every service URL answers (one line naming the task and the URL, not a traceback);
* every ``report_to`` tracker is installed.

`TaskHealth` watches the run itself: a task whose samples are mostly judge errors, or of which no
sample is used, step after step, is reported loudly while training goes on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cgpo.services.common.client import JudgesClient, RewardClient
from cgpo.services.common.errors import ServiceError
from cgpo.services.common.schemas import REQUIRED_METADATA, lacks_required
from cgpo.services.common.settings import LLM_JUDGES, RULE_JUDGES
from cgpo.trainer.config import ConfigError, RunConfig, ServiceRef, TaskConfig
from cgpo.trainer.data import Prompt, PromptFileError, load_prompts
from cgpo.trainer.scoring import api_key

Required = dict[str, Any]
"""judge name -> its required metadata groups."""

PROBE_TIMEOUT_S = 10.0


def preflight(config: RunConfig, *, training: bool = True) -> None:
    """Raise `ConfigError` listing every problem found (see the module docstring); ``training=False``
    (an evaluation) checks the held-out prompt files only."""
    problems: list[str] = []
    services = asyncio.run(_probe_services(config, problems))
    for task in config.tasks:
        judges = services.get(task.judge_service.url) if task.judge_service.url else _embedded_judges()
        if judges is not None:
            problems += _task_problems(task, judges, training)
    for where, ref in _reward_models(config):
        if ref.embedded is not None:
            problems += _reward_model_file_problems(where, ref.embedded)
    problems += _tracker_problems(config)
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))


def _tracker_problems(config: RunConfig) -> list[str]:
    from cgpo.trainer.metrics import TRACKER_MODULES

    return [f"report_to: {name} is not installed (pip install {TRACKER_MODULES[name]}), or leave it out"
            for name in config.report_to or () if not installed(TRACKER_MODULES[name])]


def installed(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec
        return module in sys.modules and sys.modules[module] is not None


def _embedded_judges() -> Required:
    return {name: REQUIRED_METADATA.get(name, ()) for name in (*RULE_JUDGES, *LLM_JUDGES)}


def _task_problems(task: TaskConfig, judges: Required, training: bool) -> list[str]:
    where = f"tasks.{task.name}"
    unknown = [j for j in task.judges if j not in judges]
    problems = [f"{where}.judges: unknown judge {j!r}; known: {sorted(judges)}" for j in unknown]
    files = {"prompts": task.prompts if training else None, "eval_prompts": task.eval_prompts}
    for name, path in files.items():
        if path is None:
            continue
        try:
            prompts = load_prompts(path)
        except PromptFileError as exc:
            problems.append(f"{where}.{name}: {exc}")
            continue
        problems += _metadata_problems(f"{where}.{name}", path, prompts,
                                       {j: judges[j] for j in task.judges if j in judges})
    return problems


def _metadata_problems(where: str, path: str, prompts: list[Prompt], judges: Required) -> list[str]:
    problems = []
    for judge, required in judges.items():
        lacking = [(p, missing) for p in prompts if (missing := lacks_required(required, p.metadata))]
        if lacking:
            first, missing = lacking[0]
            problems.append(f"{where}: {len(lacking)} of {len(prompts)} prompts lack the metadata the {judge} judge "
                            f"needs ({'; '.join(missing)}), first at {path}:{first.line}")
    return problems


def _reward_models(config: RunConfig) -> Iterable[tuple[str, ServiceRef]]:
    for task in config.tasks:
        yield f"tasks.{task.name}.reward_model", task.reward_model
    if config.eval_reward_model is not None:
        yield "eval_reward_model", config.eval_reward_model


def _reward_model_file_problems(where: str, path: str) -> list[str]:
    """An embedded reward model must be a sequence classifier (a trained score head)."""
    from transformers import AutoConfig

    if path.startswith("package:") or path.endswith(".gguf"):
        return [f"{where}.embedded: {path} is a GGUF causal LM, not a reward model; train one from it with "
                "cgpo rm train"]
    try:
        architectures = AutoConfig.from_pretrained(path).architectures or []
    except (OSError, ValueError) as exc:
        return [f"{where}.embedded: cannot read the model's config at {path}: {str(exc).splitlines()[0]}"]
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return [f"{where}.embedded: {path} is {', '.join(architectures) or 'a model'} with no trained score head, "
                "not a reward model (its head would be random); train one with cgpo rm train"]
    return []


async def _probe_services(config: RunConfig, problems: list[str]) -> dict[str, Required]:
    """Every service URL the run names, asked once what it serves; what did not answer is a problem."""
    judges: dict[str, Required] = {}
    for task in config.tasks:
        url = task.judge_service.url
        if url is None or url in judges:
            continue
        listed = await _ask(JudgesClient, task.judge_service, "judges", problems,
                            f"tasks.{task.name}.judge_service")
        if listed is not None:
            judges[url] = {j.name: tuple(tuple(group) for group in j.required) for j in listed.judges}
    models: dict[str, list[str]] = {}
    for where, ref in _reward_models(config):
        if ref.url is None:
            continue
        if ref.url not in models:
            listed = await _ask(RewardClient, ref, "models", problems, where)
            models[ref.url] = [m.name for m in listed.models] if listed is not None else []
            if listed is None:
                continue
        if ref.model not in models[ref.url]:
            problems.append(f"{where}.model: {ref.url} has no reward model {ref.model!r}; it has {models[ref.url]}")
    return judges


async def _ask(client_type: Any, ref: ServiceRef, what: str, problems: list[str], where: str) -> Any:
    client = client_type(ref.url, api_key=api_key(ref), timeout_s=PROBE_TIMEOUT_S, max_retries=0)
    try:
        return await getattr(client, what)()
    except ServiceError as exc:
        problems.append(f"{where}: {ref.url} does not answer ({type(exc).__name__}: {exc})")
        return None
    finally:
        await client.close()


@dataclass
class TaskHealth:
    """Watches every task's training records for work that is not happening: a judge answering ``error``
    for most samples, or a task using none of its samples, ``patience`` steps in a row."""

    patience: int = 5
    error_rate: float = 0.5
    streaks: dict[str, int] = field(default_factory=dict)

    def observe(self, tasks: Iterable[TaskConfig], record: dict[str, float]) -> list[str]:
        """The warnings this step's record raises (each once per streak)."""
        warnings = []
        for task in tasks:
            errors = {j: record.get(f"{task.name}/judge/{j}/error_rate", 0.0) for j in task.judges}
            failing = {j: rate for j, rate in errors.items() if rate > self.error_rate}
            unused = record.get(f"{task.name}/used_fraction") == 0.0
            streak = self.streaks.get(task.name, 0) + 1 if failing or unused else 0
            self.streaks[task.name] = streak
            if streak == self.patience:
                warnings.append(_health_warning(task, failing, unused, streak))
        return warnings


def _health_warning(task: TaskConfig, failing: dict[str, float], unused: bool, steps: int) -> str:
    parts = [f"the {j} judge answered error for {rate:.0%} of samples" for j, rate in failing.items()]
    if unused:
        parts.append("no sample was used by the update")
    hint = ("check the prompts' metadata and the judge service's log" if failing else
            "every sample is masked or infeasible: check on_judge_error, on_truncation and the judges")
    return f"WARNING: task {task.name}: for {steps} steps in a row {' and '.join(parts)}; {hint}"
