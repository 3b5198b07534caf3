"""Reward-model service settings (``CGPO_RM_*``): declared with every other ``CGPO_*`` variable in
services/common/settings.py; ``RMConfig`` is the reward-model service's name for them."""

from __future__ import annotations

from cgpo.services.common.settings import RMSettings as RMConfig

__all__ = ["RMConfig"]
