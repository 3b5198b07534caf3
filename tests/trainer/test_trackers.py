"""``report_to``: every record reaches each tracker at its step, with the run's config once; the per-task
spread metrics are in the records; a tracker that is not installed is a pre-flight error; the console
shows the held-out evaluation."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest

from cgpo.trainer.config import ConfigError, load_config
from cgpo.trainer.loop import train
from cgpo.trainer.preflight import preflight
from tests.worlds import write_config


pytestmark = pytest.mark.slow  # trains 2 steps with every tracker


class Recorder(types.ModuleType):
    """A stand-in tracker module with wandb's / trackio's / mlflow's calls, recording them."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self.calls: list[tuple[str, tuple, dict]] = []
        for call in ("init", "log", "finish", "start_run", "log_params", "log_metrics", "end_run", "log_table"):
            setattr(self, call, self._recording(call))

        class Table:
            def __init__(self, columns, data):
                self.columns, self.data = columns, data

        self.Table = Table

    def _recording(self, call: str):
        def record(*args, **kwargs):
            self.calls.append((call, args, kwargs))
        return record


def test_every_record_reaches_every_tracker_with_the_config(world, monkeypatch):
    fakes = {name: Recorder(name) for name in ("wandb", "trackio", "mlflow")}
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    lines: list[str] = []
    config = load_config(write_config(world, "tracked", steps=2, eval_every=1),
                         ["report_to=[tensorboard, wandb, trackio, mlflow]"])
    records = train(config, resume=False, log=lines.append)
    steps = [r["step"] for r in records]
    for name in ("wandb", "trackio"):
        calls = fakes[name].calls
        assert calls[0][0] == "init" and calls[0][2]["project"] == "cgpo" and calls[0][2]["name"] == "tracked"
        assert calls[0][2]["config"]["tasks"][0]["name"] == "lower"
        logged = [c for c in calls if c[0] == "log" and not any(k.startswith("samples/") for k in c[1][0])]
        assert [c[2]["step"] for c in logged] == steps
        assert logged[-1][1][0] == {k: v for k, v in records[-1].items() if k != "step"}
        tables = {(k, c[2]["step"]): v for c in calls if c[0] == "log" for k, v in c[1][0].items()
                  if k.startswith("samples/")}
        assert set(tables) == {("samples/train", 1), ("samples/train", 2), ("samples/eval", 0), ("samples/eval", 1),
                               ("samples/eval", 2)}  # step 0: the initial policy's evaluation
        train_table = tables[("samples/train", 1)]
        assert "details" in train_table.columns and len(train_table.data) == 4
        assert calls[-1][0] == "finish"
    mlflow = fakes["mlflow"].calls
    assert [c[0] for c in mlflow[:2]] == ["start_run", "log_params"]
    assert mlflow[1][1][0]["optim.lr"] == config.optim.lr and mlflow[1][1][0]["tasks.0.name"] == "lower"
    assert [c[2]["step"] for c in mlflow if c[0] == "log_metrics"] == steps and mlflow[-1][0] == "end_run"
    assert {c[2]["artifact_file"] for c in mlflow if c[0] == "log_table"} == {
        f"samples/{kind}-step-{n}.json" for kind in ("train", "eval") for n in (1, 2)} | {"samples/eval-step-0.json"}
    kept = (world / "tracked" / "train_samples" / "step-2.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in kept]
    assert len(rows) == 4 and all(set(row["details"]) == {"instructions"} for row in rows)
    assert all("followed" in row["details"]["instructions"] for row in rows)  # the judge's own account
    assert any((world / "tracked" / "tensorboard").iterdir())
    final = records[-1]
    assert {"lower/response_tokens_min", "lower/response_tokens_max", "lower/reward_std", "lower/same_reward_prompts",
            "lower/entropy", "time/step_s", "time/tokens_per_s"} <= set(final)
    assert final["lower/response_tokens_min"] <= final["lower/response_tokens"] <= final["lower/response_tokens_max"]
    assert final["lower/entropy"] > 0 and final["time/tokens_per_s"] > 0
    assert any(line.startswith("step 2/2") and "\n  eval: lower: pass " in line for line in lines)
    json.dumps(final)


def test_a_tracker_that_is_not_installed_is_a_preflight_error(world, monkeypatch):
    monkeypatch.setattr("cgpo.trainer.preflight.installed", lambda module: module != "wandb")
    config = load_config(write_config(world, "untracked", steps=1), ["report_to=[wandb]"])
    with pytest.raises(ConfigError, match=r"report_to: wandb is not installed \(pip install wandb\)"):
        preflight(config)
    assert load_config(write_config(world, "quiet", steps=1), ["report_to=[]"]).trackers == ()


def test_installed_tells_an_importable_module_from_a_missing_one():
    from cgpo.trainer.preflight import installed

    assert installed("json") and not installed("no_such_tracker_module")
