"""Fixtures of the trainer's tests."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import tiny_pair


@pytest.fixture(scope="module")
def models():
    """A tiny policy and its π_ref (tests/tiny_models.py: tiny_pair)."""
    torch.set_num_threads(1)
    return tiny_pair()
