"""The reward models' batch handler: raw and calibrated rewards for a batch of items.

Per model, each distinct token sequence of the batch — responses and the
baselines not already cached — is scored once, in length-sorted forward passes
under a token budget. Baseline rewards go to the cache, so across requests a
baseline is scored once per run, not once per rollout.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

from cgpo.services.common.errors import UnknownModelError
from cgpo.services.common.schemas import RMItem, ScoreResult
from cgpo.services.rm.calibration import BaselineCache, baseline_key, calibrated
from cgpo.services.rm.config import RMConfig
from cgpo.services.rm.model import Encoded, RewardModel


log = logging.getLogger("cgpo.rm")


class RMHandler:
    item_type = RMItem

    def __init__(self, models: Mapping[str, RewardModel], cache: BaselineCache) -> None:
        self.models = dict(models)
        self.cache = cache
        self._cache_logged: set[str] = set()

    @classmethod
    def from_config(cls, config: RMConfig, cache: BaselineCache) -> RMHandler:
        models = {name: RewardModel(name, path, max_length=config.max_length, device=config.device or None,
                                    dtype=config.dtype or None, max_batch_tokens=config.max_batch_tokens,
                                    padding_side=config.padding_side)
                  for name, path in config.named_paths.items()}
        return cls(models, cache)

    def setup(self) -> None:
        for model in self.models.values():
            model.load()

    def close(self) -> None:
        pass

    def predict(self, batch: Sequence[RMItem], deadline: float | None = None) -> list[ScoreResult]:
        """Scores in item order. An item whose model this worker does not serve answers an
        ``unknown_model`` error and the others are scored, as a judge this worker lacks answers
        ``error`` for its items alone. ``deadline`` is not used: a batch is a few bounded forward passes."""
        results: list[ScoreResult | None] = [None] * len(batch)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(batch):
            groups[item.model].append(i)
        for name, idx in groups.items():
            model = self.models.get(name)
            if model is None:
                scored = [self._unknown(name)] * len(idx)
            else:
                scored = self._score(model, [batch[i] for i in idx])
            for i, result in zip(idx, scored, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _unknown(self, name: str) -> ScoreResult:
        known = sorted(self.models)
        return ScoreResult.unscored(UnknownModelError(
            f"reward model {name!r} is not served by this worker (it has {known})", {"unknown": name, "known": known}))

    def _score(self, model: RewardModel, items: Sequence[RMItem]) -> list[ScoreResult]:
        encoded = [model.encode_text(it.text, it.prompt or None) if it.text is not None
                   else model.encode(it.prompt, it.response, it.messages) for it in items]
        # keyed by the weights' identity (services/rm/model.py), never by name and path alone
        keys = [baseline_key(model.fingerprint, it.prompt, it.baseline, _turns(it)) if it.baseline is not None
                else None for it in items]
        cached = self.cache.get_many({k for k in keys if k is not None})
        baselines: dict[str, Encoded] = {}
        for it, key in zip(items, keys, strict=True):
            if key is not None and key not in cached and key not in baselines:
                baselines[key] = model.encode(it.prompt, it.baseline or "", it.messages)
        unique = list(dict.fromkeys([e.ids for e in encoded] + [e.ids for e in baselines.values()]))
        score_of = dict(zip(unique, model.score(unique), strict=True))
        fresh = {key: score_of[enc.ids] for key, enc in baselines.items()}
        self.cache.put_many(fresh)
        self._log_cache_use(model, len(set(cached)), len(fresh))
        known = {**cached, **fresh}
        results = []
        for enc, key in zip(encoded, keys, strict=True):
            reward = score_of[enc.ids]
            if key is None:
                results.append(ScoreResult(reward=reward, truncated=enc.truncated))
            else:
                base = known[key]
                results.append(ScoreResult(reward=reward, baseline_reward=base,
                                           calibrated=calibrated(reward, base), truncated=enc.truncated))
        return results

    def _log_cache_use(self, model: RewardModel, reused: int, scored: int) -> None:
        """Say once per model whether its baseline rewards come from the cache or are scored afresh."""
        if model.name in self._cache_logged or not reused + scored:
            return
        self._cache_logged.add(model.name)
        what = "reusing cached baseline rewards" if reused else "no cached baseline rewards yet; scoring them"
        log.info("reward model %s (weights fingerprint %s): %s (first batch: %d cached, %d scored)",
                 model.name, model.fingerprint, what, reused, scored)


def _turns(item: RMItem) -> str | None:
    """A conversation as canonical text, for the cache key (None without one)."""
    if not item.messages:
        return None
    return json.dumps([[m.role, m.content] for m in item.messages], ensure_ascii=False, separators=(",", ":"))
