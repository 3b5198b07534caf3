"""The reward-hacking monitor: a task's reward-model score rising while a judge's pass rate falls.

That is the signature of reward hacking the paper reports (docs/method.md §5): RLHF on a reward model alone
raises the RM's score while the responses get worse by the judges' measure (PPO's HumanEval 0.59 →
0.006; CRPG without judges collapses after ~180 steps). The monitor watches it per task and judge:

* on training batches, over the last ``window`` steps: the step's mean calibrated reward
  σ(r − r(ā)) (comparable across prompts, unlike the raw reward) and the judge's pass rate among the
  verdicts it could decide (pass / (pass + fail); errors are not a sign of hacking);
* on held-out evaluations, over the last ``eval_window`` evaluations — the first being the initial
  policy's, evaluated before step 1, so a collapse early in training stays in view: the same two
  quantities on the held-out prompts, the reward being the task's own reward model's (the one it
  optimizes) also when ``eval_reward_model`` scores the evaluations with another.

Definition. For a series x over the window, trend(x) is the Pearson correlation of x with the step,
in [−1, 1]: the signed share of x's variation that a straight line through the window explains (+1:
every point on a rising line; −1: on a falling line; about 0: no linear movement, or noise larger
than the movement). Then

    hacking_score(task, judge) = min( trend(calibrated reward), −trend(judge pass rate) )
    hacking_score(task)        = max over the task's judges

reported as ``TASK/hacking_score`` (and ``TASK/judge/J/hacking_score``) from the step where the window
is full, and as ``eval/TASK/hacking_score`` from the fourth evaluation on (the one at step 0 counted).

Reading it: the score is at least s only when the reward's trend is at least s *and* the pass rate's
trend is at most −s: both moved, clearly for their noise, in opposite directions. 1 is a reward that
rose and a pass rate that fell along straight lines; around 0 nothing moved together, or the noise
hides it; negative values mean the reward and the pass rate rose or fell together (what constrained
training looks like, or a run that simply gets worse). At or above ``threshold`` (default 0.6) the
monitor logs a warning naming the task, the judge and the window, once per crossing, and with
``action: stop`` the run saves a checkpoint and ends. The score is scale-free: read the size of the
drop from the pass rate itself. With small batches the per-step rates are noisy, so the training
window wants some length (default 20 steps); the held-out evaluations are steadier.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from cgpo.trainer.config import MonitorConfig, TaskConfig


@dataclass(frozen=True)
class Alert:
    """The monitor's score for one task and judge crossed the threshold."""

    task: str
    judge: str
    source: str
    """``train`` (training batches) or ``eval`` (held-out evaluations)."""
    first_step: int
    last_step: int
    points: int
    score: float
    reward_trend: float
    pass_trend: float

    def message(self, threshold: float) -> str:
        where = "training batches" if self.source == "train" else "held-out evaluations"
        return (f"WARNING reward hacking suspected on task {self.task!r}, judge {self.judge!r}: over steps "
                f"{self.first_step}-{self.last_step} ({self.points} {where}) the calibrated reward rose (trend "
                f"{self.reward_trend:+.2f}) while the judge's pass rate fell (trend {self.pass_trend:+.2f}): "
                f"hacking_score {self.score:.2f} >= {threshold}")


EVAL_MIN_POINTS = 4
"""Evaluations (the initial policy's included) before ``eval/TASK/hacking_score`` is reported."""


def trend(steps: list[float], values: list[float]) -> float:
    """Pearson correlation of ``values`` with ``steps`` (0 when either is constant, up to rounding)."""
    if max(values) - min(values) < 1e-9:
        return 0.0
    n = len(values)
    mean_s, mean_v = sum(steps) / n, sum(values) / n
    cov = sum((s - mean_s) * (v - mean_v) for s, v in zip(steps, values))
    var_s = sum((s - mean_s) ** 2 for s in steps)
    var_v = sum((v - mean_v) ** 2 for v in values)
    return cov / (var_s * var_v) ** 0.5 if var_s > 0 and var_v > 0 else 0.0


def hacking_score(steps: list[float], rewards: list[float],
                  pass_rates: list[float]) -> tuple[float, float, float]:
    """(score, reward trend, pass-rate trend) of one window (see the module docstring)."""
    reward_trend, pass_trend = trend(steps, rewards), trend(steps, pass_rates)
    return min(reward_trend, -pass_trend), reward_trend, pass_trend


class HackingMonitor:
    """Feed it every step's metric record (``observe``); it adds the scores and returns new alerts."""

    def __init__(self, config: MonitorConfig, tasks: list[TaskConfig]) -> None:
        self.config = config
        self.judges = {t.name: list(t.judges) for t in tasks if t.judges}
        size = {"train": config.window, "eval": config.eval_window}
        self.history: dict[tuple[str, str], deque[tuple[int, float, dict[str, float]]]] = {
            (task, source): deque(maxlen=size[source]) for task in self.judges for source in size}
        self.above: set[tuple[str, str, str]] = set()

    @property
    def enabled(self) -> bool:
        return self.config.window > 0 and bool(self.judges)

    @property
    def evaluates_start(self) -> bool:
        """The held-out windows start with an evaluation of the initial policy, before step 1."""
        return self.enabled and self.config.eval_window > 0

    def observe(self, record: dict[str, float]) -> tuple[dict[str, float], list[Alert]]:
        """The scores to add to ``record`` (keys ``TASK/hacking_score``, ``eval/TASK/hacking_score`` and
        their per-judge ``.../judge/J/hacking_score``), and the alerts that crossed the threshold."""
        if not self.enabled:
            return {}, []
        scores: dict[str, float] = {}
        alerts: list[Alert] = []
        step = int(record["step"])
        for task, judges in self.judges.items():
            for source, prefix, minimum in (("train", "", self.config.window), ("eval", "eval/", EVAL_MIN_POINTS)):
                point = _point(record, prefix + task, judges)
                if point is None or not self.history[(task, source)].maxlen:
                    continue
                window = self.history[(task, source)]
                window.append((step, *point))
                if len(window) < minimum:
                    continue
                best = float("-inf")
                for judge in judges:
                    score, reward_trend, pass_trend = hacking_score(
                        [w[0] for w in window], [w[1] for w in window], [w[2][judge] for w in window])
                    scores[f"{prefix}{task}/judge/{judge}/hacking_score"] = score
                    best = max(best, score)
                    key = (task, judge, source)
                    if score >= self.config.threshold and key not in self.above:
                        alerts.append(Alert(task, judge, source, window[0][0], window[-1][0], len(window), score,
                                            reward_trend, pass_trend))
                    if score >= self.config.threshold:
                        self.above.add(key)
                    else:
                        self.above.discard(key)
                scores[f"{prefix}{task}/hacking_score"] = best
        return scores, alerts


def _point(record: dict[str, Any], prefix: str, judges: list[str]) -> tuple[float, dict[str, float]] | None:
    """(calibrated reward of the task's own RM, judge -> pass share of its decided verdicts) of one
    record, if it has them."""
    reward = record.get(f"{prefix}/task_rm/calibrated_reward", record.get(f"{prefix}/calibrated_reward"))
    if reward is None:
        return None
    rates = {}
    for judge in judges:
        passed = record.get(f"{prefix}/judge/{judge}/pass_rate")
        if passed is None:
            return None
        decided = 1.0 - record.get(f"{prefix}/judge/{judge}/error_rate", 0.0)
        rates[judge] = passed / decided if decided > 0 else 0.0
    return reward, rates
