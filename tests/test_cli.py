"""The `cgpo` command as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from cgpo.cli import build_parser, die, main


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
    assert result.returncode == 2 and "error: " in result.stderr and "CGPO_REDIS_URL" in result.stderr


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


def fails(capsys, *argv: str) -> str:
    """Run ``cgpo ARGV`` in this process; it must fail the one way commands fail. Returns the message."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: "), err
    return err[len("error: "):]


def test_die_prints_one_error_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        die("it broke")
    assert info.value.code == 2 and capsys.readouterr().err == "error: it broke\n"


def test_every_failure_path_ends_in_die(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("CGPO_REDIS_URL", raising=False)
    assert "CGPO_REDIS_URL" in fails(capsys, "judges", "worker")
    assert "CGPO_REDIS_URL" in fails(capsys, "rm", "worker", "--model", "a=b")
    assert "unknown judges" in fails(capsys, "judge", "--judges", "nope", "p", "r")
    not_an_object = fails(capsys, "judge", "--judges", "math", "--metadata", "[]", "p", "r")
    assert "--metadata must be a JSON object" in not_an_object
    assert "No such file" in fails(capsys, "train", str(tmp_path / "none.yaml"))
    config = tmp_path / "run.yaml"
    config.write_text("policy: p\ntasks: [{name: math, prompts: m.jsonl, reward_model: {embedded: rm}}]\n")
    assert fails(capsys, "eval", str(config), "tasks.math.k=0").startswith("tasks.math.k: ")
    assert "unknown field" in fails(capsys, "train", str(config), "optim.lrr=1")
    assert "--seeds" in fails(capsys, "demo", "--seeds", "a,b")
    assert "not a cgpo checkpoint" in fails(capsys, "export", str(tmp_path), "--out", str(tmp_path / "x"))
    assert "No such file" in fails(capsys, "warmup", "--policy", "p", "--data", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "out"))
    assert "lr" in fails(capsys, "warmup", "--policy", "p", "--data", str(tmp_path / "none"),
                         "--out", str(tmp_path / "out"), "--lr", "-1")
    assert "not a model directory" in fails(capsys, "rm", "train", "--base", str(tmp_path), "--data",
                                            str(tmp_path / "none"), "--out", str(tmp_path / "out"))


def test_bad_settings_fail_only_the_commands_that_read_them(capsys, monkeypatch):
    monkeypatch.setenv("CGPO_PORT", "http")
    assert build_parser().parse_args(["judges", "serve"]).port is None  # the flag only overrides the setting
    assert fails(capsys, "judges", "serve").startswith("CGPO_PORT: ")
    monkeypatch.setenv("CGPO_PORT", "8000")
    monkeypatch.setenv("CGPO_MAX_ITEMS", "many")
    assert fails(capsys, "rm", "serve", "--model", "a=b").startswith("CGPO_MAX_ITEMS: ")


def test_the_pair_trainers_take_their_flag_defaults_from_their_configs():
    from cgpo.services.rm.train import TrainConfig
    from cgpo.trainer.warmup import WarmupConfig

    parser = build_parser()
    for argv, config in ((["rm", "train", "--base", "b"], TrainConfig), (["warmup", "--policy", "b"], WarmupConfig)):
        args = vars(parser.parse_args([*argv, "--data", "d", "--out", "o"]))
        for field in dataclasses.fields(config):
            if field.default is not dataclasses.MISSING:
                assert args[field.name] == field.default, (config.__name__, field.name)
    args = parser.parse_args(["warmup", "--policy", "p", "--data", "d", "--out", "o", "--batch-size", "2",
                              "--eval-fraction", "0.5", "--lr", "1e-4"])
    assert (args.batch_size, args.eval_fraction, args.lr) == (2, 0.5, 1e-4)
