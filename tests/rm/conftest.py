from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_model, build_tokenizer, save_tiny_model


def tiny_rm(out_dir: Path, **model_kwargs) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, kind="sequence-classification", initializer_range=0.2, **model_kwargs)
    return save_tiny_model(out_dir, tokenizer=tokenizer, model=model)


@pytest.fixture(scope="session")
def rm_path(tmp_path_factory) -> Path:
    """A tiny randomly initialised Llama reward model (hidden 64, 2 layers)."""
    return tiny_rm(tmp_path_factory.mktemp("tiny-rm"))
