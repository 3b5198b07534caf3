"""Score a step's rollouts: every task's judge and reward-model requests in flight at once (docs/method.md §2–3, §5).

`Services` owns the clients of a run: the judges and reward models each task
names, embedded in this process (one shared app per kind; tasks that name the
same reward-model path share one model) or behind a URL. `score_tasks` sends
all tasks' requests concurrently and returns, per task and per sample, the
judges' verdicts, feasibility, and raw, baseline and calibrated rewards.

A chat prompt (a list of messages) reaches the judges as its last user turn in ``prompt`` and the
whole conversation in ``metadata.messages``; the reward model gets the whole conversation in the
item's ``messages`` and encodes it with its chat template over all turns (``judge_item``, ``rm_item``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgpo import embedded
from cgpo.services.common.client import JudgesClient, RewardClient
from cgpo.services.common.errors import ServiceError
from cgpo.services.common.settings import ClientSettings
from cgpo.trainer.config import ServiceRef, TaskConfig
from cgpo.trainer.data import Prompt

JUDGE_CHUNK = 256  # items per judge request: several requests per task keep the workers busy
RM_CHUNK = 64  # items per reward-model request, sent one after another: large evaluations stay in bounded requests


class ServiceLoop:
    """An event loop on a background thread: the synchronous training loop runs coroutines on it.

    The services' clients (and the embedded apps' batchers) live on this one loop for the whole run.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cgpo-services", daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class ScoringError(RuntimeError):
    """A judge or reward-model service failed past its retries; training cannot go on."""


@dataclass
class TaskScores:
    """Per-sample results of one task's rollouts (N = B·K, prompt-major)."""

    verdicts: list[dict[str, str]]
    """judge name -> pass / fail / error."""
    reward: list[float]
    baseline_reward: list[float]
    calibrated: list[float]
    details: list[dict[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    """judge name -> what the judge found (extracted answer, failing test, instructions not followed...);
    empty when not kept."""

    @property
    def feasible(self) -> list[bool]:
        return [all(v == "pass" for v in vs.values()) for vs in self.verdicts]

    @property
    def errored(self) -> list[bool]:
        return [any(v == "error" for v in vs.values()) for vs in self.verdicts]

    @classmethod
    def concat(cls, parts: Sequence[TaskScores]) -> TaskScores:
        """The scores of several shards, in order (data-parallel ranks' shares of one batch)."""
        return cls(*(sum((getattr(p, f.name) for p in parts), []) for f in dataclasses.fields(cls)))

    def judge_rates(self) -> dict[str, dict[str, float]]:
        """judge -> {pass_rate, error_rate} over the samples."""
        names = dict.fromkeys(n for vs in self.verdicts for n in vs)
        total = max(len(self.verdicts), 1)
        return {n: {"pass_rate": sum(vs.get(n) == "pass" for vs in self.verdicts) / total,
                    "error_rate": sum(vs.get(n) == "error" for vs in self.verdicts) / total} for n in names}


def judge_item(prompt: Prompt, response: str, judges: Sequence[str],
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """One judge request item: the prompt's text (a chat's last user turn), its metadata (or
    ``metadata``), and for a chat prompt every turn in ``metadata.messages``."""
    meta = dict(prompt.metadata if metadata is None else metadata)
    if prompt.is_chat:
        meta["messages"] = prompt.messages()
    return {"prompt": prompt.text, "response": response, "judges": list(judges), "metadata": meta}


def rm_item(prompt: Prompt, response: str, baseline: str | None) -> dict[str, Any]:
    """One reward-model item; a chat prompt also sends every turn (``messages``), which the RM encodes."""
    item: dict[str, Any] = {"prompt": prompt.text, "response": response, "baseline": baseline}
    if prompt.is_chat:
        item["messages"] = prompt.messages()
    return item


def rm_name(path: str) -> str:
    """A stable service-side name for an embedded reward model path."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
    return f"{Path(path).name or 'rm'}-{digest}"


def api_key(ref: ServiceRef) -> str | None:
    return ref.api_key or ClientSettings.from_env().api_key or None


class Services:
    """The judge and reward-model clients a run's tasks need, opened and closed together."""

    def __init__(self, tasks: Sequence[TaskConfig], extra_reward_models: Sequence[ServiceRef] = ()) -> None:
        self._judges: dict[str | None, JudgesClient] = {}
        self._rms: dict[str | None, RewardClient] = {}
        embedded_judges = sorted({j for t in tasks if t.judge_service.url is None for j in t.judges})
        if embedded_judges:
            self._judges[None] = embedded.judges(embedded_judges)
        for t in tasks:
            url = t.judge_service.url
            if url is not None and url not in self._judges:
                self._judges[url] = JudgesClient(url, api_key=api_key(t.judge_service),
                                                 max_retries=t.judge_service.retries)
        refs = [t.reward_model for t in tasks] + list(extra_reward_models)
        embedded_rms = {rm_name(r.embedded): r.embedded for r in refs if r.embedded is not None}
        if embedded_rms:
            self._rms[None] = embedded.reward_models(embedded_rms)
        for ref in refs:
            if ref.url is not None and ref.url not in self._rms:
                self._rms[ref.url] = RewardClient(ref.url, api_key=api_key(ref), max_retries=ref.retries)

    async def __aenter__(self) -> Services:
        for client in self._clients():
            await client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients():
            await client.close()

    def _clients(self) -> list[Any]:
        return [*self._judges.values(), *self._rms.values()]

    def judges(self, task: TaskConfig) -> JudgesClient:
        return self._judges[task.judge_service.url]

    def reward_model(self, task: TaskConfig) -> tuple[RewardClient, str]:
        ref = task.reward_model
        if ref.embedded is not None:
            return self._rms[None], rm_name(ref.embedded)
        return self._rms[ref.url], ref.model or ""


@dataclass(frozen=True)
class ScoringWork:
    """One task's responses to score: sample i answers ``prompts[prompt_index[i]]`` and is compared with
    that prompt's baseline text ``baselines[prompt_index[i]]``."""

    task: TaskConfig
    prompts: Sequence[Prompt]
    texts: Sequence[str]
    prompt_index: Sequence[int]
    baselines: Sequence[str]


async def score_task(services: Services, work: ScoringWork) -> TaskScores:
    """Judge and score one task's responses against each prompt's baseline."""
    task, prompts = work.task, work.prompts
    pairs = list(zip(work.texts, work.prompt_index, strict=True))
    rm, model = services.reward_model(task)
    rm_items = [rm_item(prompts[p], t, work.baselines[p]) for t, p in pairs]
    judge_calls = []
    if task.judges:
        client = services.judges(task)
        items = [judge_item(prompts[p], t, task.judges) for t, p in pairs]
        judge_calls = [client.judge(items[i : i + JUDGE_CHUNK]) for i in range(0, len(items), JUDGE_CHUNK)]

    async def reward() -> list[Any]:  # chunk by chunk: a large evaluation never sends one huge request
        out: list[Any] = []
        for i in range(0, len(rm_items), RM_CHUNK):
            out += await rm.score(model, rm_items[i : i + RM_CHUNK])
        return out

    try:
        scores, *judged = await asyncio.gather(reward(), *judge_calls)
    except ServiceError as exc:
        raise ScoringError(f"task {task.name!r}: {type(exc).__name__}: {exc.message}") from exc
    unscored = next((s.error for s in scores if s.error is not None), None)
    if unscored is not None:  # e.g. a worker that does not serve a model its gateway lists
        raise ScoringError(f"task {task.name!r}: the reward model could not score an item: "
                           f"{unscored.code}: {unscored.message}")
    results = [r for chunk in judged for r in chunk]
    verdicts = [{n: v.verdict for n, v in r.verdicts.items()} for r in results]
    details = [{n: dict(v.detail or {}) for n, v in r.verdicts.items()} for r in results]
    if not task.judges:
        verdicts, details = [{} for _ in pairs], [{} for _ in pairs]
    return TaskScores(verdicts=verdicts, reward=[s.reward for s in scores],
                      baseline_reward=[s.baseline_reward for s in scores],  # type: ignore[misc]
                      calibrated=[s.calibrated for s in scores], details=details)  # type: ignore[misc]


async def score_tasks(services: Services, work: dict[str, ScoringWork]) -> dict[str, TaskScores]:
    """``score_task`` for every task at once; results keyed by task name."""
    names = list(work)
    results = await asyncio.gather(*(score_task(services, work[n]) for n in names))
    return dict(zip(names, results, strict=True))


class Scorer:
    """A run's services on their own event loop, for the synchronous training loop: entered once (the
    clients open, embedded apps start), used by every step and evaluation, closed once."""

    def __init__(self, tasks: Sequence[TaskConfig], extra_reward_models: Sequence[ServiceRef] = ()) -> None:
        self.services = Services(tasks, extra_reward_models)
        self._loop: ServiceLoop | None = None

    def __enter__(self) -> Scorer:
        self._loop = ServiceLoop()
        try:
            self._loop.run(self.services.__aenter__())
        except BaseException:
            self._loop.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.run(self.services.__aexit__())
        finally:
            loop.close()

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the services' loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the Scorer is used outside its `with` block")
        return self._loop.run(coro)

    def score(self, work: dict[str, ScoringWork]) -> dict[str, TaskScores]:
        return self.run(score_tasks(self.services, work))
