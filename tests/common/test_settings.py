import re
from pathlib import Path

import pytest

from cgpo.services.common.settings import (
    LLM_JUDGES,
    SETTINGS,
    CacheSettings,
    ClientSettings,
    JudgeSettings,
    RMSettings,
    ServerSettings,
    ServiceSettings,
    SettingsError,
    variables,
)
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.rm.config import RMConfig


def test_settings_come_from_cgpo_variables():
    s = ServiceSettings.from_env({"CGPO_API_KEYS": "a, b,", "CGPO_MAX_ITEMS": "5", "CGPO_REQUEST_TIMEOUT_S": "2.5",
                                  "CGPO_REDIS_URL": "", "OTHER": "x"})
    assert s.api_keys == ("a", "b") and s.max_items == 5 and s.request_timeout_s == 2.5
    assert s.redis_url is None  # empty means unset


@pytest.mark.parametrize("env, words", [
    ({"CGPO_MAX_ITEMS": "many"}, "CGPO_MAX_ITEMS"),
    ({"CGPO_MAX_QUEUE": "0"}, "CGPO_MAX_QUEUE"),
    ({"CGPO_BATCH_MAX_WAIT_MS": "-1"}, "CGPO_BATCH_MAX_WAIT_MS"),
])
def test_bad_settings_name_the_variable(env, words):
    with pytest.raises(ValueError, match=words):
        ServiceSettings.from_env(env)


def test_judge_config_validates_names_and_llm_model():
    assert JudgeConfig.from_env({"CGPO_JUDGES_ENABLED": "math,refusal"}).names == ("math", "refusal")
    assert "safety" in JudgeConfig(llm_model="/models/guard").names
    with pytest.raises(ValueError, match="unknown judges"):
        JudgeConfig.from_env({"CGPO_JUDGES_ENABLED": "math,astrology"})
    with pytest.raises(ValueError, match="CGPO_JUDGES_LLM_MODEL"):
        JudgeConfig(enabled=("safety",))
    with pytest.raises(ValueError, match="CGPO_JUDGES_CODE_TIMEOUT_S"):
        JudgeConfig.from_env({"CGPO_JUDGES_CODE_TIMEOUT_S": "0"})


def test_constructing_settings_reads_only_the_arguments(monkeypatch):
    monkeypatch.setenv("CGPO_MAX_ITEMS", "9")
    monkeypatch.setenv("CGPO_JUDGES_PROCESSES", "3")
    assert ServiceSettings().max_items == 1024 and JudgeSettings().processes == 0
    assert ServiceSettings.from_env().max_items == 9 and JudgeSettings.from_env().processes == 3
    assert ServiceSettings.from_env(max_items=4).max_items == 4  # keyword overrides win


def test_only_the_exact_upper_case_names_are_read():
    s = ServiceSettings.from_env({"cgpo_max_items": "5", "CGPO_Max_Queue": "6", "CGPO_MAX_ITEMSX": "7"})
    assert (s.max_items, s.max_queue) == (1024, 10_000)


@pytest.mark.parametrize("build, words", [
    (lambda: ServiceSettings(max_items=0), "CGPO_MAX_ITEMS: Input should be greater than 0, got 0"),
    (lambda: ServiceSettings(public_paths=("metrics",)), "CGPO_PUBLIC_PATHS: must be paths starting with '/'"),
    (lambda: ServerSettings.from_env({"CGPO_PORT": "http"}), "CGPO_PORT: "),
    (lambda: ServerSettings.from_env({"CGPO_LOG_LEVEL": "INFO"}), "CGPO_LOG_LEVEL: "),
    (lambda: JudgeSettings(enabled=("safety",)), "need CGPO_JUDGES_LLM_MODEL"),
    (lambda: JudgeSettings.from_env({"CGPO_JUDGES_CODE_SANDBOX": "loose"}), "CGPO_JUDGES_CODE_SANDBOX: "),
    (lambda: JudgeSettings.from_env({"CGPO_JUDGES_PROCESSES": "-1"}), "CGPO_JUDGES_PROCESSES: "),
    (lambda: RMSettings.from_env({"CGPO_RM_MODELS": "helpful"}), "must be NAME=PATH"),
    (lambda: RMSettings(models=("a=x", "a=y")), "'a' is given twice"),
    (lambda: RMSettings(max_length=4096, max_batch_tokens=2048), "CGPO_RM_MAX_BATCH_TOKENS must be >="),
    (lambda: RMSettings.from_env({"CGPO_RM_DTYPE": "int8"}), "CGPO_RM_DTYPE: "),
    (lambda: RMSettings.from_env({"CGPO_RM_PADDING_SIDE": "middle"}), "CGPO_RM_PADDING_SIDE: "),
])
def test_every_error_names_its_variable(build, words):
    with pytest.raises(SettingsError) as info:
        build()
    assert words in str(info.value)


def test_lists_are_comma_separated_and_the_services_settings_parse_as_before():
    judges = JudgeSettings.from_env({"CGPO_JUDGES_ENABLED": " math , refusal,", "CGPO_JUDGES_PROCESSES": "2"})
    assert judges.names == ("math", "refusal") and judges.process_count == 2
    assert JudgeSettings(llm_model="/models/guard").names[-3:] == LLM_JUDGES
    rm = RMSettings.from_env({"CGPO_RM_MODELS": "helpful=/m/a, safety=/m/b", "CGPO_RM_BASELINE_TTL_S": "60"})
    assert rm.named_paths == {"helpful": "/m/a", "safety": "/m/b"} and rm.baseline_ttl_s == 60.0
    assert ServerSettings.from_env({"CGPO_HOST": "0.0.0.0", "CGPO_PORT": "9000"}).port == 9000
    assert ClientSettings.from_env({"CGPO_API_KEY": ""}).api_key is None  # empty means unset
    assert CacheSettings.from_env({}).cache_dir == "~/.cache/cgpo"


def test_every_variable_is_declared_once_with_a_description():
    names = [name for cls in SETTINGS for name in cls.variable_names()]
    assert len(names) == len(set(names))
    assert set(variables()) == set(names)
    assert all(v.description.strip() for v in variables().values())
    assert all(name.startswith("CGPO_") for name in names)


def test_every_cgpo_variable_the_code_names_is_declared():
    """A ``CGPO_*`` name anywhere in the installed packages' code is a setting declared in one place."""
    repo = Path(__file__).resolve().parents[2]
    sources = [p for folder in ("cgpo", "services", "trainer") for p in (repo / folder).rglob("*.py")
               if "sandbox" not in p.parts]
    named = {m for p in sources for m in re.findall(r"\bCGPO_[A-Z0-9_]*[A-Z0-9]\b", p.read_text())}
    assert named and named <= set(variables()), sorted(named - set(variables()))


def test_the_judge_and_rm_configs_are_their_settings_classes():
    assert JudgeConfig is JudgeSettings and RMConfig is RMSettings
    config = JudgeConfig.from_env({"CGPO_JUDGES_ENABLED": "math"}, processes=2)
    assert (config.enabled, config.processes) == (("math",), 2)
    with pytest.raises(SettingsError, match="CGPO_JUDGES_MATH_TIMEOUT_S"):
        JudgeConfig.from_env({"CGPO_JUDGES_MATH_TIMEOUT_S": "soon"})
