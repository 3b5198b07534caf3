"""Judge-service settings (``CGPO_JUDGES_*``): declared with every other ``CGPO_*`` variable in
services/common/settings.py; ``JudgeConfig`` is the judges' name for them."""

from __future__ import annotations

from cgpo.services.common.settings import LLM_JUDGES, RULE_JUDGES
from cgpo.services.common.settings import JudgeSettings as JudgeConfig

__all__ = ["LLM_JUDGES", "RULE_JUDGES", "JudgeConfig"]
