"""The judges' batch handler: one batch of items in, one result per item out.

Items are grouped by judge so each judge sees all its samples of the batch at
once (its own batching: process pools, model forward passes); different judges
run concurrently on threads, since the heavy ones wait on processes or release
the GIL. A judge that raises answers ``error`` for its samples; it never fails
the batch. Every judge gets the batch's deadline (Unix time, the latest of its
jobs'): work past it is wasted, and the judges that can run long stop there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from cgpo.services.common.schemas import JudgeItem, JudgeResult, Verdict
from cgpo.services.judges.base import Judge, Sample, errored


class JudgeHandler:
    item_type = JudgeItem

    def __init__(self, judges: Mapping[str, Judge]) -> None:
        self.judges = dict(judges)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.judges)), thread_name_prefix="judge")

    def setup(self) -> None:
        for judge in self.judges.values():
            judge.setup()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for judge in self.judges.values():
            judge.close()

    def predict(self, batch: Sequence[JudgeItem], deadline: float | None = None) -> list[JudgeResult]:
        positions: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(batch):
            for name in dict.fromkeys(item.judges):
                positions[name].append(i)
        groups = list(positions.items())
        if len(groups) == 1:
            outcomes = [self._run(*groups[0], batch, deadline)]
        else:
            outcomes = list(self._pool.map(lambda g: self._run(*g, batch, deadline), groups))
        verdicts: list[dict[str, Verdict]] = [{} for _ in batch]
        for (name, idx), out in zip(groups, outcomes, strict=True):
            for i, verdict in zip(idx, out, strict=True):
                verdicts[i][name] = verdict
        return [
            JudgeResult(feasible=all(v.verdict == "pass" for v in vs.values()),
                        verdicts={name: vs[name] for name in dict.fromkeys(item.judges)})
            for item, vs in zip(batch, verdicts, strict=True)
        ]

    def _run(self, name: str, idx: list[int], batch: Sequence[JudgeItem], deadline: float | None) -> list[Verdict]:
        judge = self.judges.get(name)
        if judge is None:
            return [errored(f"judge {name!r} is not served by this worker", served=sorted(self.judges))] * len(idx)
        samples = [Sample(batch[i].prompt, batch[i].response, batch[i].metadata) for i in idx]
        try:
            out = judge.judge(samples, deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - a crashing judge answers error, the batch goes on
            return [errored(f"judge {name!r} crashed: {exc!r}")] * len(idx)
        if len(out) != len(samples):
            return [errored(f"judge {name!r} returned {len(out)} verdicts for {len(samples)} samples")] * len(idx)
        return out
