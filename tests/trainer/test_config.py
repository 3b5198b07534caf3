import json
import re
import textwrap

import pytest
from pydantic import ValidationError

from cgpo.trainer.config import (
    ConfigError,
    GenerationConfig,
    MonitorConfig,
    OptimConfig,
    RunConfig,
    ServiceRef,
    TaskConfig,
    build_config,
    load_config,
)

BASE = textwrap.dedent("""
    policy: ./policy
    steps: 10
    tasks:
      - name: math
        prompts: math.jsonl
        reward_model: {embedded: ./rm}
        judges: [math]
        optimizer: crraft
        k: 4
      - name: chat
        prompts: chat.jsonl
        reward_model: {url: "http://rm:8001", model: helpful}
        judges: [refusal]
        judge_service: {url: "http://judges:8000"}
        kl_max: 2
""")


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(BASE)
    return p


def test_yaml_with_overrides_by_dotted_path_and_task_name(path):
    config = load_config(path, ["tasks.math.kl_max=20", "optim.lr=3e-5", "generation.temperature=0.7"])
    math, chat = config.tasks
    assert math.kl_max == 20.0 and chat.kl_max == 2.0
    assert config.optim.lr == 3e-5 and config.generation.temperature == 0.7
    assert chat.reward_model.url == "http://rm:8001" and chat.judge_service.url == "http://judges:8000"
    assert math.on_judge_error == "mask" and config.reference is None


@pytest.mark.parametrize("overrides, field", [
    (["tasks.math.k=0"], "tasks.math.k"),
    (["optim.lrr=1"], "optim.lrr"),
    (["tasks.code.k=1"], "code"),
    (["generation.engine=jax"], "generation.engine"),
    (["tasks.math.optimizer=codpo", "tasks.math.k=1"], "tasks.math.k"),
    (["tasks.math.optimizer=ppo"], "tasks.math.optimizer"),
    (["tasks.math.reward_model={url: 'http://x'}"], "tasks.math.reward_model.model"),
    (["tasks.math.reward_model={}"], "tasks.math.reward_model"),
    (["optim.lr=abc"], "optim.lr"),
    (["tasks.math.on_judge_error=ignore"], "tasks.math.on_judge_error"),
    (["steps=0"], "steps"),
    (["nonsense"], "key=value"),
    (["tasks.math.judge_service={url: 'http://x', retries: -1}"], "tasks.math.judge_service.retries"),
    (["eval_reward_model={url: 'http://x'}"], "eval_reward_model.model"),
    (["device=tpu"], "device"),
    (["generation.temperature=0"], "generation.temperature"),
    (["generation.eval_temperature=-1"], "generation.eval_temperature"),
    (["generation.eval_max_new_tokens=0"], "generation.eval_max_new_tokens"),
    (["precision=fp16"], "precision"),
    (["generation.max_batch_rows=0"], "generation.max_batch_rows"),
])
def test_bad_configs_are_rejected_naming_the_field(path, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path, overrides)


def test_missing_required_fields_and_duplicate_tasks(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("tasks: []\n")
    with pytest.raises(ConfigError, match="policy"):
        load_config(p)
    p.write_text(BASE.replace("name: chat", "name: math"))
    with pytest.raises(ConfigError, match="duplicate"):
        load_config(p)


def test_unified_reward_model_replaces_every_tasks_rm_in_the_baseline(path):
    config = load_config(path, ["unconstrained_baseline=true", "unified_reward_model={embedded: ./one-rm}"])
    assert {t.reward_model.embedded for t in config.tasks} == {"./one-rm"}
    with pytest.raises(ConfigError, match="unconstrained_baseline"):
        load_config(path, ["unified_reward_model={embedded: ./one-rm}"])


def test_evaluation_settings_default_to_the_training_ones(path):
    config = load_config(path, ["generation.temperature=0.7", "generation.max_new_tokens=32"])
    assert (config.generation.for_eval().temperature, config.generation.for_eval().max_new_tokens) == (0.7, 32)
    config = load_config(path, ["generation.eval_temperature=0", "generation.eval_max_new_tokens=64"])
    evaluation = config.generation.for_eval()
    assert (evaluation.temperature, evaluation.max_new_tokens) == (0, 64)
    assert config.generation.temperature == 1.0  # training keeps its own


def test_errors_carry_their_location_and_list_every_problem(path):
    with pytest.raises(ConfigError) as info:
        load_config(path, ["tasks.0.k=0", "tasks.chat.kl_max=x", "optim.grad_clip=-1", "monitor.window=2"])
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert "tasks.math.k: Input should be greater than 0, got 0" in lines  # a task is named as overrides name it
    assert any(line.startswith("tasks.chat.kl_max: ") and "valid number" in line for line in lines)
    assert any(line.startswith("optim.grad_clip: ") and "-1" in line for line in lines)
    assert "monitor.window: must be 0 (off) or at least 3 steps, got 2" in lines


def test_a_task_without_a_usable_name_is_located_by_position(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(BASE.replace("name: chat", "name: [chat]"))
    with pytest.raises(ConfigError, match=r"^tasks\.1\.name: "):
        load_config(p)


@pytest.mark.parametrize("overrides, where, known", [
    (["bogus=1"], "bogus", "policy"),
    (["optim.momentum=0.9"], "optim.momentum", "lr"),
    (["tasks.math.temperature=0.5"], "tasks.math.temperature", "kl_max"),
    (["tasks.chat.judge_service.token=x"], "tasks.chat.judge_service.token", "api_key"),
    (["eval_reward_model={embedded: ./rm, path: ./x}"], "eval_reward_model.path", "embedded"),
])
def test_unknown_fields_are_rejected_with_what_is_known(path, overrides, where, known):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message.startswith(f"{where}: unknown field; known: [") and f"'{known}'" in message


def test_tasks_are_addressed_by_name_first_then_by_position(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(BASE.replace("name: chat", "name: '0'"))  # a task named "0" is the second one
    config = load_config(p, ["tasks.0.k=7", "tasks.math.k=5", "tasks.1.kl_max=3"])
    math, zero = config.tasks
    assert (math.k, zero.k, zero.kl_max) == (5, 7, 3.0)
    with pytest.raises(ConfigError, match="unknown task '2'"):
        load_config(p, ["tasks.2.k=1"])


@pytest.mark.parametrize("override, where", [
    ("tasks.math.k=4.0", "tasks.math.k"),  # integers stay integers
    ("tasks.math.k='4'", "tasks.math.k"),
    ("steps=true", "steps"),
    ("tasks.math.kl_max=true", "tasks.math.kl_max"),  # a YAML boolean is no number
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("generation.top_p=1.5", "generation.top_p"),
    ("monitor.eval_window=3", "monitor.eval_window"),
    ("monitor.action=halt", "monitor.action"),
    ("tasks.math.lam=-0.1", "tasks.math.lam"),
    ("tasks=[]", "tasks"),
])
def test_types_and_ranges_are_checked_as_before(path, override, where):
    with pytest.raises(ConfigError, match=rf"^{re.escape(where)}: "):
        load_config(path, [override])


def test_numbers_accept_what_yaml_reads_as_strings_and_ints(path):
    config = load_config(path, ["optim.lr=3e-5", "tasks.math.kl_max=20", "tasks.math.name=2024"])
    assert config.optim.lr == 3e-5 and config.tasks[0].kl_max == 20.0 and config.tasks[0].name == "2024"


def test_yaml_errors_and_non_mappings_are_config_errors(tmp_path, path):
    p = tmp_path / "bad.yaml"
    p.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="override 'x=\\{a:'"):
        load_config(path, ["x={a:"])


def test_the_unified_reward_model_is_checked_and_replaces_even_a_bad_task_rm(path):
    config = load_config(path, ["unconstrained_baseline=true", "unified_reward_model={embedded: ./one-rm}",
                                "tasks.math.reward_model={}"])
    assert all(t.reward_model == ServiceRef(embedded="./one-rm") for t in config.tasks)
    with pytest.raises(ConfigError, match=r"^unified_reward_model\.model: is required with a url"):
        load_config(path, ["unconstrained_baseline=true", "unified_reward_model={url: 'http://x'}"])


def test_configs_are_frozen_copies_but_generation_settings_are_rechecked(path):
    config = load_config(path)
    with pytest.raises(ValidationError, match="frozen"):
        config.steps = 3
    with pytest.raises(ValidationError, match="frozen"):
        config.tasks[0].k = 3
    other = config.model_copy(update={"policy": "./other"})
    assert (other.policy, config.policy) == ("./other", "./policy") and other.tasks == config.tasks
    config.generation.top_p = 2.0  # sampling settings may be changed in place; engines check them again
    with pytest.raises(ConfigError, match=r"^generation\.top_p: "):
        config.generation.validate()


def test_every_field_is_documented():
    for model in (ServiceRef, TaskConfig, GenerationConfig, OptimConfig, MonitorConfig, RunConfig):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert not undocumented, f"{model.__name__}: {undocumented}"


def test_the_dumped_config_builds_the_same_config(path):
    config = load_config(path, ["unconstrained_baseline=true", "unified_reward_model={embedded: ./one-rm}"])
    dumped = json.loads(json.dumps(config.model_dump()))
    assert build_config(dumped) == config
