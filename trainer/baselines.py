"""Each prompt's baseline response ā (docs/method.md §3): the dataset's, or one π_ref sample drawn once and cached.

Baselines are prepared before training and stored in ``{output_dir}/baselines/{task}.json``, keyed by
prompt id — a hash of the prompt, its metadata and its dataset baseline (trainer/data.py) — with, per
prompt, the text, the token ids, whether it ended with EOS, and the judges' verdicts themselves. The
file is reused only while what determines it is unchanged, checked by two fingerprints:

* ``sampling``: the reference model (path and the identity of its files: names, sizes, modification
  times — retraining in place changes them), the sampling settings (temperature, top-p, max new
  tokens, precision) and the seed. A change discards the whole file: every baseline is drawn again.
* ``judging``: the task's judge names and where they run. A change keeps the responses and judges them
  all again.

An ``error`` verdict is retried (``JUDGE_ATTEMPTS`` in all) and, if it persists, stored as ``error``,
never as a fail: the next run judges that baseline again. Until it passes, ā is no fallback for CRRAFT
(under ``on_judge_error: mask`` its feasibility is unknown, under ``violation`` it is infeasible).

A sampled ā is kept as the ids π_ref drew: it ends with EOS only if π_ref drew one (a response cut at
``max_new_tokens`` gets none). A dataset ā is a finished response: its ids are its text's, then EOS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgpo.trainer.config import RunConfig, TaskConfig
from cgpo.trainer.data import Prompt, render
from cgpo.trainer.rollout import RolloutEngine, Rollouts
from cgpo.trainer.scoring import Services, judge_item

JUDGE_ATTEMPTS = 3
"""Judge requests per baseline while a judge answers ``error`` (the first one included)."""
RETRY_DELAY_S = 0.5
"""Wait before the first retry of the baselines that got an ``error``; doubled for each next one."""


@dataclass
class Baseline:
    """One prompt's baseline response ā, as stored in the task's cache file."""

    text: str
    ids: list[int]
    """Token ids: as π_ref drew them (EOS only if it drew one), or a dataset text's ids then EOS."""
    finished: bool
    """ā ended with EOS (False: cut at ``max_new_tokens``)."""
    verdicts: dict[str, str] | None
    """judge -> pass / fail / error; None until judged."""

    @property
    def errored(self) -> bool:
        return any(v == "error" for v in (self.verdicts or {}).values())


Baselines = dict[str, Baseline]
"""prompt id -> its baseline, for one task."""


def files_identity(location: str) -> str:
    """A short hash of a model's identity: for a local directory or file, every file's relative name,
    size and modification time (content is not read: fast for any model size); else the name itself."""
    path = Path(location)
    if path.is_dir():
        files = [(str(f.relative_to(path)), f.stat()) for f in sorted(path.rglob("*")) if f.is_file()]
    else:
        files = [(path.name, path.stat())] if path.is_file() else []
    digest = hashlib.sha256(location.encode() if not files else b"")
    for name, stat in files:
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fingerprints(config: RunConfig, task: TaskConfig) -> dict[str, dict[str, Any]]:
    """What a task's cached baselines depend on (see the module docstring)."""
    reference = config.reference or config.policy
    gen = config.generation
    return {"sampling": {"reference": reference, "reference_files": files_identity(reference),
                         "temperature": gen.temperature, "top_p": gen.top_p, "max_new_tokens": gen.max_new_tokens,
                         "precision": config.precision, "seed": config.seed},
            "judging": {"judges": list(task.judges), "judge_service": task.judge_service.url}}


def baseline_feasible(task: TaskConfig, entry: Baseline) -> bool:
    """ā may stand in for CRRAFT: every judge answered ``pass`` and, unless ``on_truncation: keep``,
    it ended with EOS."""
    return all(v == "pass" for v in (entry.verdicts or {}).values()) and (
        entry.finished or task.on_truncation == "keep")


def rates(task: TaskConfig, entries: list[Baseline]) -> dict[str, float]:
    """The baselines' shares that are feasible (``baseline_feasible``), that a judge could not decide,
    and that were cut at ``max_new_tokens``."""
    n = max(len(entries), 1)
    return {"feasible_rate": sum(baseline_feasible(task, e) for e in entries) / n,
            "error_rate": sum(e.errored for e in entries) / n,
            "truncated_rate": sum(not e.finished for e in entries) / n}


@dataclass(frozen=True)
class Sources:
    """Where baselines come from: π_ref's engine and tokenizer, the task's judges, and how to run a
    coroutine on the services' loop."""

    tokenizer: Any
    engine: RolloutEngine
    services: Services
    run: Callable[[Any], Any]
    main: bool = True
    """This process judges and stores the baselines. Ranks of a sharded reference that only take their
    part in sampling (``collective_engine``) are not main."""


def prepare_baselines(task: TaskConfig, prompts: list[Prompt], sources: Sources, config: RunConfig,
                      log: Any = print) -> Baselines:
    """Every prompt's baseline; samples and judges only what the cache lacks (or holds stale), and logs
    whether the cache was reused, extended or rebuilt."""
    path = cache_path(config, task)
    wanted = fingerprints(config, task)
    cache, state = _usable_part(json.loads(path.read_text()) if path.exists() else None, wanted)
    unique = list({p.id: p for p in prompts}.values())
    missing = [p for p in unique if p.id not in cache]
    cache.update(_draw(missing, sources, config.seed))
    if not sources.main:  # rank 0 judges and stores; this rank reads its cache afterwards
        return cache
    unjudged = [p for p in unique if cache[p.id].verdicts is None or cache[p.id].errored]
    if unjudged:
        verdicts = sources.run(judge_baselines(task, [(p, cache[p.id].text) for p in unjudged], sources.services))
        for p, v in zip(unjudged, verdicts, strict=True):
            cache[p.id].verdicts = v
    if state == "reused" and (missing or unjudged):
        state = f"reused and extended ({len(missing)} new, {len(unjudged)} judged)"
    if state != "reused":
        _store(path, wanted, cache)
    summary = rates(task, [cache[p.id] for p in unique])
    log(f"baselines {task.name}: {len(unique)} prompts, cache {path} {state}; feasible "
        f"{summary['feasible_rate']:.0%}, judge errors {summary['error_rate']:.0%}, cut at max_new_tokens "
        f"{summary['truncated_rate']:.0%}")
    return cache


class ShardedEngine:
    """Sampling from a sharded π_ref, which every rank must run: rank 0's prompts are the ones drawn (each
    rank decides from its own view of the cache, which may differ: file times on another node), each
    rank draws its contiguous share of them (``lockstep`` engine) and every rank gets them all, exactly as
    one process draws them (samples depend on the seed and the prompt's index only). Called by every
    rank for every task, with or without prompts of its own."""

    def __init__(self, engine: RolloutEngine, dist: Any) -> None:
        self.engine, self.dist = engine, dist

    def generate(self, prompt_ids: Any, k: int, seed: int, prompt_offset: int = 0) -> Rollouts:
        prompt_ids = self.dist.gather(list(prompt_ids))[0]  # rank 0's
        first, stop = self.dist.shard(len(prompt_ids))
        mine = self.engine.generate(prompt_ids[first:stop], k, seed, prompt_offset + first)
        parts = self.dist.gather((first, mine))
        return Rollouts.concat([p[1] for p in parts], [p[0] for p in parts])


def _draw(prompts: list[Prompt], sources: Sources, seed: int) -> Baselines:
    """New baselines: a prompt's dataset response when it has one (a finished response: its text, then
    EOS), else one sample from π_ref, drawn before training and kept exactly as drawn."""
    tokenizer, out = sources.tokenizer, {}
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for p in prompts:
        if p.baseline is not None:
            ids = list(tokenizer(p.baseline, add_special_tokens=False)["input_ids"]) + eos
            out[p.id] = Baseline(p.baseline, ids, True, None)
    to_sample = [p for p in prompts if p.baseline is None]
    collective = isinstance(sources.engine, ShardedEngine)  # every rank samples, what rank 0 asks for
    if to_sample or collective:
        rollouts = sources.engine.generate([render(tokenizer, p) for p in to_sample], k=1, seed=seed)
        if not sources.main:
            return out
        for p, text, ids, finished in zip(to_sample, rollouts.text, rollouts.response_ids, rollouts.finished,
                                          strict=True):
            out[p.id] = Baseline(text, list(ids), finished, None)
    return out


def _store(path: Path, fingerprint: dict[str, Any], cache: Baselines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint,
                               "prompts": {pid: dataclasses.asdict(b) for pid, b in cache.items()}}))
    tmp.replace(path)


def load_baselines(task: TaskConfig, prompts: list[Prompt], config: RunConfig) -> Baselines:
    """The baselines another process (data-parallel rank 0) has just prepared, exactly as it stored them
    (its fingerprint is not recomputed here: on another node the model files may have other times)."""
    path = cache_path(config, task)
    stored = json.loads(path.read_text())
    if any(p.id not in stored.get("prompts", {}) for p in prompts):
        raise RuntimeError(f"{path} does not hold this run's baselines (rank 0 prepares them first)")
    return {pid: Baseline(**entry) for pid, entry in stored["prompts"].items()}


def cache_path(config: RunConfig, task: TaskConfig) -> Path:
    return config.out / "baselines" / f"{task.name}.json"


def _usable_part(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> tuple[Baselines, str]:
    """The cached entries still valid under ``wanted``, and what happened to the cache (for the log)."""
    if stored is None:
        return {}, "built"
    if not isinstance(stored, dict) or "fingerprint" not in stored:
        return {}, "rebuilt (written by an older version, without a fingerprint)"
    if stored["fingerprint"]["sampling"] != wanted["sampling"]:
        changed = sorted(k for k in wanted["sampling"]
                         if stored["fingerprint"]["sampling"].get(k) != wanted["sampling"][k])
        return {}, f"rebuilt ({', '.join(changed)} changed)"
    cache = {pid: Baseline(**entry) for pid, entry in stored["prompts"].items()}
    if stored["fingerprint"]["judging"] != wanted["judging"]:
        for entry in cache.values():
            entry.verdicts = None
        return cache, "reused, judged again (the judges changed)"
    return cache, "reused"


async def judge_baselines(task: TaskConfig, pairs: list[tuple[Prompt, str]],
                          services: Services) -> list[dict[str, str]]:
    """The task's verdicts on each (prompt, baseline), judge by judge; an ``error`` is asked again, up to
    ``JUDGE_ATTEMPTS`` requests in all, and stays ``error`` (not ``fail``) if it persists."""
    if not task.judges:
        return [{} for _ in pairs]
    client = services.judges(task)
    verdicts: list[dict[str, str]] = [{} for _ in pairs]
    pending = list(range(len(pairs)))
    for attempt in range(JUDGE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        results = await client.judge([judge_item(pairs[i][0], pairs[i][1], task.judges) for i in pending])
        for i, result in zip(pending, results, strict=True):
            verdicts[i] = {name: v.verdict for name, v in result.verdicts.items()}
        pending = [i for i in pending if any(v == "error" for v in verdicts[i].values())]
        if not pending:
            break
    return verdicts
