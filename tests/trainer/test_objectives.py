"""The optimizers' one interface: every name the run config accepts has an objective."""

from __future__ import annotations

import pytest

from cgpo.trainer.config import ConfigError, build_config
from cgpo.trainer.objectives import OPTIMIZERS


def config_with(optimizer: str):
    task = {"name": "t", "prompts": "-", "reward_model": {"embedded": "-"}, "optimizer": optimizer, "k": 4}
    return build_config({"policy": "-", "tasks": [task]})


def test_the_config_accepts_exactly_the_registered_optimizers():
    for name in OPTIMIZERS:
        assert config_with(name).tasks[0].optimizer == name
    with pytest.raises(ConfigError, match="optimizer"):
        config_with("ppo")
    assert set(OPTIMIZERS) == {"crpg", "codpo", "crraft"}

