"""The judges and reward models as other trainers call rewards: TRL (`cgpo.adapters.trl`), verl
(`cgpo.adapters.verl`) and OpenRLHF (`cgpo.adapters.openrlhf`). The shared part is here: a `Judging`
that sends one request for a whole batch, to a judge service by URL or to judges embedded in the calling
program, from synchronous or asynchronous code.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cgpo.services.common.client import JudgesClient, RewardClient
from cgpo.services.common.schemas import REQUIRED_METADATA, JudgeResult, lacks_required
from cgpo.services.common.settings import AdapterSettings, ClientSettings

METADATA_FIELDS = ("answer", "answer_format", "answer_pattern", "unit_tests", "test", "entry_point",
                   "instruction_id_list", "kwargs", "strict", "mode", "categories")
"""Dataset columns read as judge metadata when a row has them (IFEval's ``instruction_id_list`` and
``kwargs``, a math ``answer``, HumanEval's ``test`` and ``entry_point``, ...)."""


class _Loop:
    """One event loop on a background thread for the program's lifetime: the clients live on it, and
    synchronous callers (a TRL reward function, verl's reward manager) run their requests there."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="cgpo-adapters", daemon=True).start()
                cls._loop = loop
            return cls._loop

    @classmethod
    def run(cls, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, cls.get()).result()


class Judging:
    """``judges`` by ``url`` (default: ``CGPO_ADAPTER_JUDGES_URL``), or embedded in this process when
    there is none; ``api_key`` defaults to ``CGPO_API_KEY``."""

    def __init__(self, judges: Sequence[str], url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
        if isinstance(judges, str):
            judges = [judges]
        if not judges:
            raise ValueError("name at least one judge")
        self.judges = list(judges)
        self.url = url or AdapterSettings.from_env().judges_url
        self._api_key = api_key or ClientSettings.from_env().api_key
        self._timeout_s = timeout_s
        self._client: JudgesClient | None = None
        self._opening: asyncio.Lock | None = None

    async def _opened(self) -> JudgesClient:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is None:
                if self.url:
                    client = JudgesClient(self.url, api_key=self._api_key, timeout_s=self._timeout_s)
                else:
                    from cgpo import embedded

                    client = embedded.judges(self.judges)
                self._client = await client.__aenter__()
                atexit.register(self._close_at_exit)
        return self._client

    def _close_at_exit(self) -> None:
        if self._client is not None and _Loop._loop is not None and _Loop._loop.is_running():
            try:
                _Loop.run(self._client.close())
            except RuntimeError:
                pass

    async def _judge(self, prompts: Sequence[str], responses: Sequence[str],
                     metadata: Sequence[Mapping[str, Any]]) -> list[JudgeResult | None]:
        """Every (prompt, response, metadata) row judged by every judge, in one request; None for a row
        lacking the metadata some judge requires (it is not sent)."""
        rows = list(zip(prompts, responses, metadata, strict=True))
        sent = [i for i, (_, _, meta) in enumerate(rows) if self.applies(meta)]
        results: list[JudgeResult | None] = [None] * len(rows)
        if sent:
            client = await self._opened()
            items = [{"prompt": rows[i][0], "response": rows[i][1], "judges": self.judges,
                      "metadata": dict(rows[i][2])} for i in sent]
            for i, result in zip(sent, await client.judge(items), strict=True):
                results[i] = result
        return results

    def judge(self, prompts: Sequence[str], responses: Sequence[str],
              metadata: Sequence[Mapping[str, Any]]) -> list[JudgeResult | None]:
        """`_judge` from synchronous code: run on the adapters' own event loop, where the client lives."""
        return _Loop.run(self._judge(prompts, responses, metadata))

    async def judge_async(self, prompts: Sequence[str], responses: Sequence[str],
                          metadata: Sequence[Mapping[str, Any]]) -> list[JudgeResult | None]:
        """`_judge` awaited from any event loop (the caller's): it runs on the adapters' own."""
        future = asyncio.run_coroutine_threadsafe(self._judge(prompts, responses, metadata), _Loop.get())
        return await asyncio.wrap_future(future)

    def applies(self, metadata: Mapping[str, Any]) -> bool:
        """The row carries what every judge requires (``REQUIRED_METADATA``)."""
        return all(not lacks_required(REQUIRED_METADATA.get(j, ()), dict(metadata)) for j in self.judges)


_by_judges: dict[tuple[str, ...], Judging] = {}


def default_judges() -> tuple[str, ...]:
    """The judges of rows that name none (``CGPO_ADAPTER_JUDGES``)."""
    return tuple(AdapterSettings.from_env().judges)


def judge_rows(judges: Sequence[tuple[str, ...]], prompts: Sequence[str], responses: Sequence[str],
               metadata: Sequence[Mapping[str, Any]]) -> list[JudgeResult | None]:
    """Rows that may name different judges: one request per set of judges (a `Judging` per set, kept for
    the program's lifetime), results in row order."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, names in enumerate(judges):
        if not names:
            raise ValueError("no judges for a row: name them with the row or in CGPO_ADAPTER_JUDGES")
        groups.setdefault(tuple(names), []).append(i)
    results: list[JudgeResult | None] = [None] * len(judges)
    for names, rows in groups.items():
        judging = _by_judges.setdefault(names, Judging(list(names)))
        found = judging.judge([prompts[i] for i in rows], [responses[i] for i in rows], [metadata[i] for i in rows])
        for i, result in zip(rows, found, strict=True):
            results[i] = result
    return results


def row_metadata(columns: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Row ``index``'s judge metadata from a batch's columns: its ``metadata`` column (an object or its
    JSON text), then any of ``METADATA_FIELDS`` present as columns of their own."""
    meta: dict[str, Any] = {}
    given = columns.get("metadata")
    if given is not None:
        value = given[index]
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, Mapping):
            meta.update(value)
    for field in METADATA_FIELDS:
        column = columns.get(field)
        if column is not None and field not in meta:
            meta[field] = column[index]
    return meta


def text_of(value: Any) -> str:
    """A prompt or completion as text: a string, or a chat's last message content (TRL's conversational
    format)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        return str(value[-1].get("content", ""))
    raise ValueError(f"expected text or a list of chat messages, got {type(value).__name__}")


def prompt_text(value: Any) -> str:
    """A prompt as the judges read it: the text, or a chat's last user turn."""
    if isinstance(value, list):
        users = [m.get("content", "") for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
        return str(users[-1]) if users else text_of(value)
    return text_of(value)


class Rewarding:
    """A reward model by ``url`` (default ``CGPO_ADAPTER_RM_URL``) and ``model`` (``CGPO_ADAPTER_RM_MODEL``):
    raw and, with baselines, calibrated rewards σ(r(s, a) − r(s, ā))."""

    def __init__(self, url: str | None = None, model: str | None = None, api_key: str | None = None) -> None:
        settings = AdapterSettings.from_env()
        self.url = url or settings.rm_url
        self.model = model or settings.rm_model
        if not self.url or not self.model:
            raise ValueError("a reward model needs a service url and a model name (or CGPO_ADAPTER_RM_URL and "
                             "CGPO_ADAPTER_RM_MODEL)")
        self._api_key = api_key or ClientSettings.from_env().api_key
        self._client: RewardClient | None = None

    async def ascore(self, prompts: Sequence[str], responses: Sequence[str],
                     baselines: Sequence[str | None] | None = None) -> list[Any]:
        if self._client is None:
            self._client = RewardClient(self.url, api_key=self._api_key)
        baselines = baselines or [None] * len(prompts)
        items = [{"prompt": p, "response": r, **({"baseline": b} if b is not None else {})}
                 for p, r, b in zip(prompts, responses, baselines, strict=True)]
        return await self._client.score(self.model, items)

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              baselines: Sequence[str | None] | None = None) -> list[Any]:
        return _Loop.run(self.ascore(prompts, responses, baselines))
