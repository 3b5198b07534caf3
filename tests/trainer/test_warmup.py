import json

import pytest
import torch

from tests.tiny_models import build_model, build_tokenizer, save_tiny_model
from cgpo.trainer.warmup import WarmupConfig, warmup


def test_dpo_warmup_learns_held_out_preferences(tmp_path):
    torch.set_num_threads(1)
    tok = build_tokenizer()
    save_tiny_model(tmp_path / "policy", tokenizer=tok, model=build_model(tok, hidden_size=64, num_heads=2))
    topics = ["the sea", "Rome", "bread", "a poem", "the moon", "math", "elections", "a bicycle", "rain", "music"]
    with open(tmp_path / "prefs.jsonl", "w") as f:
        for i in range(60):
            topic = topics[i % len(topics)]
            f.write(json.dumps({"prompt": f"Is {topic} safe? ({i})", "chosen": "Yes, safe.",
                                "rejected": "No, unsafe."}) + "\n")
    report = warmup(WarmupConfig(str(tmp_path / "policy"), str(tmp_path / "prefs.jsonl"), str(tmp_path / "out"),
                                 epochs=2, lr=3e-3, beta=0.5, batch_size=8, eval_fraction=0.2), log=lambda _: None)
    assert report["held_out"] == 12
    assert report["after"] == 1.0 and report["after"] > report["before"]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_bad_warmup_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="lr"):
        WarmupConfig("p", "d", "o", lr=0)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        warmup(WarmupConfig("p", str(tmp_path / "bad.jsonl"), str(tmp_path / "o")))
