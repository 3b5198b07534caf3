import pytest

from cgpo.services.common.settings import ServiceSettings
from cgpo.services.judges.config import JudgeConfig


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
