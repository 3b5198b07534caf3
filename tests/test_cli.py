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
            "from cgpo.services.judges.app import build_app\nbuild_app()\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr


def test_ifeval_prompts_and_model_convert_from_the_command_line(subprocess_env, tmp_path):
    out = tmp_path / "train.jsonl"
    made = cgpo("ifeval", "prompts", "--out", str(out), "-n", "12", "--seed", "5", env=subprocess_env)
    assert made.returncode == 0, made.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(1 <= len(r["metadata"]["instruction_id_list"]) <= 3 for r in rows)
    assert cgpo("ifeval", "prompts", "--out", str(out), "-n", "0", env=subprocess_env).returncode == 2
    missing = cgpo("model", "convert", str(tmp_path / "none.gguf"), env=subprocess_env)
    assert missing.returncode == 2 and "no such GGUF file" in missing.stderr
    plain = cgpo("model", "convert", str(tmp_path), env=subprocess_env)
    assert plain.returncode == 0 and plain.stdout.strip() == str(tmp_path)  # a directory is already loadable
    needs_out = cgpo("model", "convert", str(tmp_path), "--layers", "2", env=subprocess_env)
    assert needs_out.returncode == 2 and "--layers needs --out" in needs_out.stderr
