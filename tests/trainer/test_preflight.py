"""Pre-flight checks: a run that cannot work fails before any model loads, with one line per problem naming
the field, exit status 2 and nothing written; a run whose tasks stop working while it trains says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgpo.cli import main
from cgpo.trainer.config import ConfigError, load_config
from cgpo.trainer.preflight import TaskHealth, preflight
from tests.conftest import free_port
from tests.worlds import write_config


def cgpo_train(config: Path, *overrides: str, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(config), *overrides])
    return stopped.value.code, capsys.readouterr().err


def test_a_misspelt_judge_ends_the_command_before_anything_loads_or_is_written(world, capsys, monkeypatch):
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the pre-flight checks")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    config = write_config(world, "misspelt", steps=1)
    code, err = cgpo_train(config, "tasks.lower.judges=[instruction]", capsys=capsys)
    assert code == 2
    assert err.startswith("error: tasks.lower.judges: unknown judge 'instruction'; known: [")
    assert "Traceback" not in err and "CGPO_JUDGES_ENABLED" not in err
    assert not (world / "misspelt").exists()  # no config.json, no output directory


def test_prompts_without_a_judges_required_metadata_are_named_with_their_file_and_line(world, tmp_path):
    prompts = tmp_path / "math.jsonl"
    rows = [{"prompt": "1+1?", "metadata": {"answer": "2"}}, {"prompt": "2+2?"}, {"prompt": "3+3?", "metadata": {}}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(write_config(world, "no-answer", steps=1), [
        f"tasks.lower.prompts={prompts}", "tasks.lower.judges=[math, instructions]"])
    with pytest.raises(ConfigError) as raised:
        preflight(config)
    lines = str(raised.value).splitlines()
    assert f"tasks.lower.prompts: 2 of 3 prompts lack the metadata the math judge needs (answer), first at " \
           f"{prompts}:2" in lines
    assert any(line.startswith("tasks.lower.prompts: 3 of 3 prompts lack the metadata the instructions judge needs "
                               "(instruction_id_list)") for line in lines)


def test_a_prompt_file_that_does_not_parse_is_named(world, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{not json\n')
    config = load_config(write_config(world, "broken", steps=1), [f"tasks.lower.eval_prompts={broken}"])
    with pytest.raises(ConfigError, match=rf"tasks\.lower\.eval_prompts: {broken}:2: invalid JSON"):
        preflight(config)


def test_a_causal_lm_given_as_a_reward_model_is_refused(world):
    config = load_config(write_config(world, "lm-as-rm", steps=1),
                         [f"tasks.lower.reward_model.embedded={world}/policy"])
    with pytest.raises(ConfigError, match=r"tasks\.lower\.reward_model\.embedded: .* is LlamaForCausalLM with no "
                                          r"trained score head"):
        preflight(config)
    preflight(load_config(write_config(world, "rm-ok", steps=1)))  # the world's reward model is one


def test_services_that_do_not_answer_are_one_line_each_naming_the_task_and_url(world):
    judges, rm = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    config = load_config(write_config(world, "unreachable", steps=1), [
        f"tasks.lower.judge_service={{url: '{judges}'}}", f"tasks.lower.reward_model={{url: '{rm}', model: helpful}}"])
    with pytest.raises(ConfigError) as raised:
        preflight(config)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"tasks.lower.judge_service: {judges} does not answer (ServiceUnavailableError")
    assert lines[1].startswith(f"tasks.lower.reward_model: {rm} does not answer (ServiceUnavailableError")


def test_relative_paths_in_a_config_file_are_found_beside_it(world, tmp_path, monkeypatch):
    folder = tmp_path / "recipe"
    folder.mkdir()
    (folder / "train.jsonl").write_text((world / "prompts.jsonl").read_text())
    config_file = write_config(world, "beside", steps=1)
    text = config_file.read_text().replace(f"prompts: {world}/prompts.jsonl", "prompts: train.jsonl")
    (folder / "run.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(folder / "run.yaml")
    assert config.tasks[0].prompts == str(folder / "train.jsonl")
    preflight(config)
    # an override is typed in a shell: relative to the working directory, as the shell sees it
    assert load_config(folder / "run.yaml", ["tasks.lower.prompts=other.jsonl"]).tasks[0].prompts == "other.jsonl"


def test_a_task_that_stops_working_is_reported_once_per_streak():
    from cgpo.trainer.config import TaskConfig

    task = TaskConfig(name="math", prompts="p.jsonl", reward_model={"embedded": "rm"}, judges=["math"])
    health = TaskHealth(patience=3)
    broken = {"math/judge/math/error_rate": 1.0, "math/used_fraction": 0.0}
    fine = {"math/judge/math/error_rate": 0.0, "math/used_fraction": 0.5}
    said = [health.observe([task], record) for record in (broken, broken, broken, broken, fine, broken)]
    assert [len(s) for s in said] == [0, 0, 1, 0, 0, 0]
    assert said[2][0].startswith("WARNING: task math: for 3 steps in a row the math judge answered error for 100% "
                                 "of samples and no sample was used by the update")
    unused = {"math/judge/math/error_rate": 0.0, "math/used_fraction": 0.0}
    assert health.observe([task], fine) == []
    said = [health.observe([task], unused) for _ in range(3)]
    assert [len(s) for s in said] == [0, 0, 1] and "no sample was used" in said[2][0]
