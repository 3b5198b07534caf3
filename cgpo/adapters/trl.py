"""Judges as TRL reward functions: ``GRPOTrainer(reward_funcs=[judge_reward("math")], ...)``.

A reward function gets a batch's ``prompts`` and ``completions`` (text, or chat messages in TRL's
conversational format) and the dataset's other columns as keyword arguments, and returns one reward per
completion. `judge_reward` sends the whole batch to the judges in one request — by URL (``url=`` or
``CGPO_ADAPTER_JUDGES_URL``) or embedded in the training script — and maps each row's verdicts to a number:

* feasible (every judge passed) → ``values["pass"]`` (1.0), else ``values["fail"]`` (0.0); a judge that
  answered ``error`` → ``values["error"]`` (None: TRL leaves the row out of this function's reward);
* a row without the metadata a judge requires (``REQUIRED_METADATA``: a math row with no ``answer``) →
  None, and it is not sent: the judge does not apply to it.

Judge metadata comes from the row's ``metadata`` column (an object or its JSON text) and from columns
named as the judges name their fields (IFEval's ``instruction_id_list`` and ``kwargs`` exactly as the
dataset has them, a math ``answer``, HumanEval's ``test`` and ``entry_point``, ...). Per judge, the pass
and error rates go to TRL's log (``log_metric``: ``NAME/JUDGE/pass_rate``, ``.../error_rate``,
``NAME/applicable``) and each row's verdict to its completions table (``log_extra``). ``asynchronous=True``
gives a coroutine function, which TRL runs concurrently with its other async reward functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cgpo.adapters import Judging, prompt_text, row_metadata, text_of

VALUES = {"pass": 1.0, "fail": 0.0, "error": None}


def judge_reward(judges: str | Sequence[str], *, url: str | None = None, api_key: str | None = None,
                 values: Mapping[str, float | None] | None = None, name: str | None = None,
                 asynchronous: bool = False) -> Callable[..., Any]:
    """One TRL reward function for ``judges`` together (feasible iff all pass); see the module docstring."""
    judging = Judging(judges, url, api_key)
    unknown = set(values or {}) - set(VALUES)
    if unknown:
        raise ValueError(f"values has unknown keys {sorted(unknown)}; known: pass, fail, error")
    scores = {**VALUES, **(values or {})}
    label = name or "cgpo_" + "_".join(judging.judges)

    def rows(prompts: Sequence[Any], completions: Sequence[Any], columns: Mapping[str, Any]) -> tuple:
        return ([prompt_text(p) for p in prompts], [text_of(c) for c in completions],
                [row_metadata(columns, i) for i in range(len(prompts))])

    def rewards(results: list[Any], columns: Mapping[str, Any]) -> list[float | None]:
        _log(label, judging.judges, results, columns)
        return [None if r is None else _score(r, scores) for r in results]

    if asynchronous:
        async def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
            return rewards(await judging.judge_async(*rows(prompts, completions, columns)), columns)
    else:
        def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
            return rewards(judging.judge(*rows(prompts, completions, columns)), columns)

    reward.__name__ = reward.__qualname__ = label  # TRL logs rewards/<name>/mean
    return reward


def judge_rewards(judges: Sequence[str], **options: Any) -> list[Callable[..., Any]]:
    """One reward function per judge (each logged on its own), e.g. ``reward_funcs=judge_rewards(["math",
    "refusal"])``; ``options`` as for `judge_reward` (``name`` excepted)."""
    return [judge_reward(judge, **options) for judge in judges]


def _score(result: Any, scores: Mapping[str, float | None]) -> float | None:
    if any(v.verdict == "error" for v in result.verdicts.values()):
        return scores["error"]
    return scores["pass"] if result.feasible else scores["fail"]


def _log(label: str, judges: Sequence[str], results: list[Any], columns: Mapping[str, Any]) -> None:
    log_metric, log_extra = columns.get("log_metric"), columns.get("log_extra")
    judged = [r for r in results if r is not None]
    if log_metric is not None:
        log_metric(f"{label}/applicable", len(judged) / len(results) if results else 0.0)
        for judge in judges:
            if judged:
                verdicts = [r.verdicts[judge].verdict for r in judged]
                log_metric(f"{label}/{judge}/pass_rate", verdicts.count("pass") / len(verdicts))
                log_metric(f"{label}/{judge}/error_rate", verdicts.count("error") / len(verdicts))
    if log_extra is not None:
        for judge in judges:
            log_extra(f"{label}/{judge}", [_verdict_text(r, judge) for r in results])


def _verdict_text(result: Any, judge: str) -> str:
    """A row's verdict for the completions table, with what the judge found."""
    if result is None:
        return "n/a"
    verdict = result.verdicts[judge]
    detail = verdict.detail or {}
    said = next((f"{k}={detail[k]}" for k in ("extracted", "reason", "error", "failed") if detail.get(k) is not None),
                "")
    return f"{verdict.verdict} {said}".strip()
