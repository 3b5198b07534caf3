"""Encoding, truncation and batch-invariant scoring of the reward model."""

from __future__ import annotations

import pytest

from cgpo.services.rm.model import RewardModel

PROMPT = "What is the capital of France?"
RESPONSES = ["Paris.", "The capital of France is Paris.", "Paris is the capital of France. " * 4,
             "It is Paris, a city on the Seine. " * 8, "Lyon, I believe."]


def load(path, **kwargs) -> RewardModel:
    model = RewardModel("helpful", str(path), **kwargs)
    model.load()
    return model


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_score_does_not_depend_on_its_batch(rm_path, side):
    model = load(rm_path, padding_side=side)
    seqs = [model.encode(PROMPT, r).ids for r in RESPONSES]
    assert len({len(s) for s in seqs}) == len(seqs)  # mixed lengths
    alone = [model.score([s])[0] for s in seqs]
    together = model.score(seqs)
    reversed_ = model.score(seqs[::-1])[::-1]
    assert together == pytest.approx(alone, abs=1e-5)
    assert reversed_ == pytest.approx(alone, abs=1e-5)
    other_side = load(rm_path, padding_side="right" if side == "left" else "left")
    assert other_side.score(seqs) == pytest.approx(alone, abs=1e-5)


def test_score_equals_a_direct_unpadded_forward(rm_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = load(rm_path)
    ids = model.encode(PROMPT, RESPONSES[1]).ids
    reference = AutoModelForSequenceClassification.from_pretrained(rm_path).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, 0].item()
    assert model.score([ids])[0] == pytest.approx(expected, abs=1e-5)


def test_token_budget_splits_forward_passes(rm_path):
    model = load(rm_path, max_batch_tokens=64, max_length=64)
    seqs = [model.encode(PROMPT, r).ids for r in RESPONSES[:3]]
    before = model.forward_passes
    model.score(seqs)
    assert model.forward_passes - before >= 2


def test_chat_template_puts_prompt_and_response_in_their_turns(rm_path):
    model = load(rm_path)
    text = model.tokenizer.decode(model.encode(PROMPT, "Paris.").ids)
    assert text.index("<|user|>") < text.index(PROMPT) < text.index("<|assistant|>") < text.index("Paris.")


def test_over_long_input_loses_the_prompt_start_never_the_response(rm_path):
    model = load(rm_path, max_length=48)
    long_prompt = "Tell me everything about the history of Rome and its emperors. " * 10
    enc = model.encode(long_prompt, "Rome was founded in 753 BC.")
    assert enc.truncated and len(enc.ids) == 48
    full = model.encode(long_prompt, "Rome was founded in 753 BC.")
    response_ids = model.tokenizer("Rome was founded in 753 BC.", add_special_tokens=False).input_ids
    decoded = model.tokenizer.decode(enc.ids)
    assert "Rome was founded in 753 BC." in decoded and len(response_ids) < 48
    assert full == enc  # deterministic
    short = model.encode(PROMPT, "Paris.")
    assert not short.truncated


def test_one_token_sequences_are_read_at_their_token_under_left_padding(rm_path):
    model = load(rm_path, padding_side="left")
    one = (model.encode(PROMPT, "Paris.").ids[-1],)
    longer = model.encode(PROMPT, RESPONSES[3]).ids
    assert model.score([one, longer])[0] == pytest.approx(model.score([one])[0], abs=1e-5)
