"""``cgpo demo --quick``: the whole pipeline (world, SFT, RMs, every run, report) end to end, in the CLI.

Pipeline only: at this size no accuracy claim is expected to hold (the real demo is ``make demo``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cgpo.demo.report import KINDS
from cgpo.demo.world import TASKS


def run_quick(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cgpo", "demo", "--out", str(out), "--quick"], env=env,
                          capture_output=True, text=True, timeout=240)


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
            assert 0.0 <= metrics["pass_rate"] <= 1.0 and metrics["pass_rate_std"] == 0.0
            assert {"reward", "calibrated_reward", "kl"} <= set(metrics)
    assert all(results["runs"]["sft"]["tasks"][t]["kl"] == 0.0 for t in TASKS)  # the start is π_ref itself
    assert {c["claim"] for c in results["claims"]} and all(isinstance(c["held"], bool) for c in results["claims"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert "| math: pass % |" in report and "curves.png" in report
    assert "SFT start" in done.stdout and "wrote" in done.stdout
    # every training run logged its steps and evaluated the held-out prompts at the end
    for kind in KINDS[1:]:
        lines = (tmp_path / "runs" / f"{kind}-0" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == results["budget"]["steps"]
        assert "eval/math/pass_rate" in json.loads(lines[-1])

    again = run_quick(tmp_path, subprocess_env)  # the world (SFT policy, RMs) is cached, not rebuilt
    assert again.returncode == 0, again.stderr[-3000:]
    assert "world: reusing" in again.stdout


def test_bad_arguments_are_refused_before_any_work(tmp_path, subprocess_env):
    done = subprocess.run([sys.executable, "-m", "cgpo", "demo", "--out", str(tmp_path), "--seeds", "a,b"],
                          env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--seeds" in done.stderr
    assert not (tmp_path / "world").exists()
