"""Judges and calibrated rewards as verl reward functions (``custom_reward_function``).

verl loads a function by file path and name and calls it as its reward managers do — the naive manager
once per response, ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``, the batch
manager (``reward_model.reward_manager=batch``) once per batch, ``compute_score(data_sources=,
solution_strs=, ground_truths=, extra_infos=)`` — and takes a float, or a dict whose ``score`` is the
reward and whose other keys it logs::

    custom_reward_function:
      path: <cgpo's install>/cgpo/adapters/verl.py     # python -c "import cgpo.adapters.verl as m; print(m.__file__)"
      name: compute_score_batch                        # or compute_score, or calibrated_score_batch

What to judge comes with each row's ``extra_info`` (a dict, as verl's data preprocessing writes it):
``judges`` (a list; default ``CGPO_ADAPTER_JUDGES``, comma-separated), ``metadata`` for them, ``prompt`` (the
judges' and the reward model's view of the prompt) and ``baseline`` (the calibrated reward's ā). The row's
``ground_truth`` is the judges' ``answer`` when the metadata has none. Judges run by ``CGPO_ADAPTER_JUDGES_URL``, or
embedded in verl's reward worker; rows with the same judges go in one request. A row is scored
``1.0`` when feasible (every judge passed), ``0.0`` otherwise; ``judge_error`` (a judge could not decide)
and ``applicable`` (the row carried the metadata its judges require; 0.0 if not, and it is not sent) are
logged beside it, with each judge's pass. ``calibrated_score_batch`` scores with the reward-model service
(``CGPO_ADAPTER_RM_URL``, ``CGPO_ADAPTER_RM_MODEL``): σ(r(s, a) − r(s, ā)) with a baseline, else the raw reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgpo.adapters import Rewarding, default_judges, judge_rows

_rewarding: list[Rewarding] = []


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: dict[str, Any] | None = None, **_: Any) -> dict[str, float]:
    """One response (verl's naive reward manager)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]


def compute_score_batch(data_sources: Sequence[Any] | None = None, solution_strs: Sequence[str] = (),
                        ground_truths: Sequence[Any] | None = None, extra_infos: Sequence[Any] | None = None,
                        **_: Any) -> list[dict[str, float]]:
    """A batch of responses (verl's batch reward manager): one judges request per set of judges."""
    n = len(solution_strs)
    ground_truths = list(ground_truths) if ground_truths is not None else [None] * n
    infos = _infos(extra_infos, n)
    judges = [_judges(info) for info in infos]
    results = judge_rows(judges, [str(info.get("prompt", "")) for info in infos], list(solution_strs),
                         [_metadata(info, truth) for info, truth in zip(infos, ground_truths, strict=True)])
    return [_scored(result, names) for result, names in zip(results, judges, strict=True)]


def calibrated_score_batch(data_sources: Sequence[Any] | None = None, solution_strs: Sequence[str] = (),
                           ground_truths: Sequence[Any] | None = None, extra_infos: Sequence[Any] | None = None,
                           **_: Any) -> list[dict[str, float]]:
    """The reward model's calibrated reward (raw without a baseline) for a batch, in one request."""
    if not _rewarding:
        _rewarding.append(Rewarding())
    infos = _infos(extra_infos, len(solution_strs))
    results = _rewarding[0].score([str(info.get("prompt", "")) for info in infos], list(solution_strs),
                                  [info.get("baseline") for info in infos])
    out = []
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"reward model: {result.error.message}")
        value = result.calibrated if result.calibrated is not None else result.reward
        out.append({"score": float(value), "reward": float(result.reward)})
    return out


def _infos(extra_infos: Sequence[Any] | None, n: int) -> list[dict[str, Any]]:
    """Each row's extra_info as a dict (verl gives None where the data has none)."""
    given = list(extra_infos) if extra_infos is not None else [None] * n
    return [info if isinstance(info, dict) else {} for info in given]


def _judges(info: dict[str, Any]) -> tuple[str, ...]:
    judges = info.get("judges") or default_judges()
    return (judges,) if isinstance(judges, str) else tuple(j.strip() for j in judges)


def _metadata(info: dict[str, Any], ground_truth: Any) -> dict[str, Any]:
    meta = dict(info.get("metadata") or {})
    if ground_truth is not None and "answer" not in meta:
        meta["answer"] = ground_truth if isinstance(ground_truth, str | int | float) else str(ground_truth)
    return meta


def _scored(result: Any, judges: Sequence[str]) -> dict[str, float]:
    if result is None:
        return {"score": 0.0, "applicable": 0.0, "judge_error": 0.0}
    verdicts = {j: result.verdicts[j].verdict for j in judges}
    out = {"score": 1.0 if result.feasible else 0.0, "applicable": 1.0,
           "judge_error": float(any(v == "error" for v in verdicts.values()))}
    out.update({f"{j}_pass": float(v == "pass") for j, v in verdicts.items()})
    return out
