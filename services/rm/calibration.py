"""The calibrated reward R_calib = σ(r(s,a) − r(s,ā)) and the cache of baseline scores (docs/method.md §3).

A prompt's baseline ā is fixed for a run, so r(s,ā) is computed once and kept
under a hash of (model fingerprint, prompt, baseline, conversation): in Redis when
the service has one (shared by every worker), else in a bounded in-process LRU.
The model fingerprint is the identity of the weights, tokenizer and config files
plus the max length and dtype (``cgpo.services.rm.model.weights_fingerprint``), not
the model's name or path: a reward model retrained at the same path gets new keys,
so its stale scores are never served.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Protocol


def calibrated(reward: float, baseline_reward: float) -> float:
    """σ(r − r_baseline), computed without overflow for large gaps."""
    gap = reward - baseline_reward
    if gap >= 0:
        return 1.0 / (1.0 + math.exp(-gap))
    z = math.exp(gap)
    return z / (1.0 + z)


def baseline_key(model_fingerprint: str, prompt: str, baseline: str, conversation: str | None = None) -> str:
    """The cache key of r(s, ā): a hash of the model's fingerprint, the prompt (or the whole
    ``conversation`` when the item has one) and the baseline."""
    digest = hashlib.sha256()
    parts = (model_fingerprint, prompt, baseline) + ((conversation,) if conversation is not None else ())
    for part in parts:
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguity between fields
        digest.update(data)
    return digest.hexdigest()


class BaselineCache(Protocol):
    def get_many(self, keys: Iterable[str]) -> dict[str, float]: ...

    def put_many(self, values: Mapping[str, float]) -> None: ...


class MemoryCache:
    """Bounded LRU of baseline scores, for the embedded default."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, float] = OrderedDict()

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        found = {}
        for key in keys:
            if key in self._data:
                self._data.move_to_end(key)
                found[key] = self._data[key]
        return found

    def put_many(self, values: Mapping[str, float]) -> None:
        self._data.update(values)
        for key in values:
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


class RedisCache:
    """Baseline scores in Redis (``cgpo:rm:baseline:{hash}``), shared by all workers, with a TTL."""

    def __init__(self, url: str, prefix: str, ttl_s: float) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.prefix, self.ttl_ms = prefix, int(ttl_s * 1000)

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        keys = list(keys)
        if not keys:
            return {}
        values = self.redis.mget([self.prefix + k for k in keys])
        return {k: float(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def put_many(self, values: Mapping[str, float]) -> None:
        if not values:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for key, value in values.items():
                pipe.set(self.prefix + key, repr(value), px=self.ttl_ms)
            pipe.execute()
