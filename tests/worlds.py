"""The tiny world the trainer's end-to-end tests run in (the ``world`` fixture is in tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

LOWERCASE = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}


def make_world(root: Path) -> Path:
    """A random tiny policy, a random tiny RM, and prompts whose judge wants an all-lowercase answer."""
    tok = build_tokenizer()
    save_tiny_model(root / "policy", tokenizer=tok,
                    model=build_model(tok, hidden_size=64, num_heads=2, initializer_range=0.2))
    save_tiny_model(root / "rm", tokenizer=tok,
                    model=build_model(tok, kind="sequence-classification", hidden_size=64, num_heads=2))
    for name, topics in (("prompts", ["the sea", "a bicycle", "Rome", "bread", "a poem", "the moon", "math",
                                      "elections"]), ("eval", ["a cat", "music", "rain", "trees"])):
        lines = [json.dumps({"prompt": f"Write about {t} in lowercase.", "metadata": LOWERCASE}) for t in topics]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_config(world: Path, out: str, optimizer: str = "crpg", lr: float = 3e-3, **extra: object) -> Path:
    """A run on the tiny world; its 8-token responses are fragments, judged as they are (``keep``)."""
    lines = "\n".join(f"{k}: {v}" for k, v in extra.items())
    path = world / f"{out}.yaml"
    path.write_text(f"""
policy: {world}/policy
steps: 15
output_dir: {world}/{out}
generation: {{max_new_tokens: 8}}
optim: {{lr: {lr}, micro_batch_size: 16}}
{lines}
tasks:
  - name: lower
    prompts: {world}/prompts.jsonl
    eval_prompts: {world}/eval.jsonl
    reward_model: {{embedded: {world}/rm}}
    judges: [instructions]
    optimizer: {optimizer}
    k: 8
    batch_size: 4
    kl_max: 100
    on_truncation: keep
""")
    return path
