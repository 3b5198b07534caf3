"""The `cgpo` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def cgpo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cgpo", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_judge_once_exit_status_follows_feasibility(subprocess_env):
    ok = cgpo("judge", "--judges", "math", "--metadata", '{"answer": "4"}', "What is 2+2?",
              "2+2 is 4. The final answer is 4.", env=subprocess_env)
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["feasible"] is True and body["verdicts"]["math"]["detail"]["extracted"] == "4"

    wrong = cgpo("judge", "--judges", "math,refusal", "--metadata", '{"answer": "5"}', "What is 2+2?",
                 "The final answer is 4.", env=subprocess_env)
    assert wrong.returncode == 1
    verdicts = json.loads(wrong.stdout)["verdicts"]
    assert verdicts["math"]["verdict"] == "fail" and verdicts["refusal"]["verdict"] == "pass"


def test_judge_once_rejects_bad_input_with_status_2(subprocess_env):
    assert cgpo("judge", "--judges", "nope", "p", "r", env=subprocess_env).returncode == 2
    bad_json = cgpo("judge", "--judges", "math", "--metadata", "{not json", "p", "r", env=subprocess_env)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr


def test_worker_without_redis_says_what_it_needs(subprocess_env):
    result = cgpo("judges", "worker", env=subprocess_env)
    assert result.returncode != 0 and "CGPO_REDIS_URL" in result.stderr


def test_the_judges_gateway_never_imports_torch(subprocess_env):
    code = ("import sys; from cgpo.cli import main\n"
            "try:\n    main(['judges', 'worker', '--help'])\nexcept SystemExit:\n    pass\n"
            "from services.judges.app import build_app\nbuild_app()\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr
