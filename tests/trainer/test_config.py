import textwrap

import pytest

from cgpo.trainer.config import ConfigError, load_config

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
