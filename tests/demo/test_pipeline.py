"""``cgpo demo --quick``: the whole pipeline (world, SFT, RMs, every run, report) end to end, in the CLI.

Pipeline only: at this size no accuracy claim is expected to hold (the real demo is ``make demo``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cgpo.demo.report import KINDS
from cgpo.demo.world import TASKS


def run_quick(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cgpo", "demo", "--out", str(out), "--quick"], env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_quick_demo_writes_results_curves_and_report(tmp_path, subprocess_env):
    done = run_quick(tmp_path, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0]
    assert set(results["runs"]) == set(KINDS)
    for kind in KINDS:
        tasks = results["runs"][kind]["tasks"]
        assert set(tasks) == set(TASKS)
        for metrics in tasks.values():
            assert 0.0 <= metrics["pass_rate"] <= 1.0
            assert {"reward", "calibrated_reward"} <= set(metrics)
            assert ("kl" in metrics) == (kind != "sft")  # the start is π_ref: no KL is estimated for it
    assert {c["claim"] for c in results["claims"]} and all(isinstance(c["held"], bool) for c in results["claims"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert "| math: pass % |" in report and "curves.png" in report
    monitor = report.split("## Reward-hacking monitor")[1].split("\n## ")[0]
    lines = [line for line in monitor.splitlines() if line.startswith("- ")]
    assert len(lines) == len(KINDS[1:]) * len(TASKS)  # one per run and task
    assert all(line.endswith("(no score (the run is shorter than a window))") for line in lines)
    assert {c["claim"] for c in results["claims"]} >= {
        "the reward-hacking monitor flags the baseline on every hacked task, in every seed",
        "the reward-hacking monitor stays quiet on crpg and crraft (every task and seed)"}
    assert "SFT start" in done.stdout and "wrote" in done.stdout
    # every training run evaluated the SFT start (step 0), logged its steps and evaluated at the end
    starts = []
    for kind in KINDS[1:]:
        jsonl = (tmp_path / "runs" / f"{kind}-0" / "metrics.jsonl").read_text()
        rows = [json.loads(line) for line in jsonl.splitlines()]
        assert [r["step"] for r in rows] == list(range(results["budget"]["steps"] + 1))
        assert "eval/math/pass_rate" in rows[-1]
        starts.append({k: v for k, v in rows[0].items() if k.startswith("eval/")})
    # one SFT start, whichever run evaluated it (CGPO runs also score harmful with their own safety RM)
    shared = set.intersection(*(set(start) for start in starts))
    assert {f"eval/{t}/pass_rate" for t in TASKS} <= shared
    assert all({k: start[k] for k in shared} == {k: starts[0][k] for k in shared} for start in starts)
    sft = results["runs"]["sft"]["tasks"]
    assert all(sft[t]["pass_rate"] == starts[0][f"eval/{t}/pass_rate"] for t in TASKS)

    again = run_quick(tmp_path, subprocess_env)  # the world (SFT policy, RMs) is cached, not rebuilt
    assert again.returncode == 0, again.stderr[-3000:]
    assert "world: reusing" in again.stdout


def test_bad_arguments_are_refused_before_any_work(tmp_path, subprocess_env):
    done = subprocess.run([sys.executable, "-m", "cgpo", "demo", "--out", str(tmp_path), "--seeds", "a,b"],
                          env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--seeds" in done.stderr
    assert not (tmp_path / "world").exists()
