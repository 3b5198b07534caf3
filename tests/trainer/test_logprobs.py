import pytest
import torch

from tests.tiny_models import build_model, build_tokenizer
from cgpo.trainer.logprobs import sequence_logprobs

# Prompts and responses of different lengths, one empty response, so padding and grouping matter.
PROMPTS = [[1, 5, 9, 13], [1, 7], [1, 4, 8, 15, 16, 23, 42], [1, 3, 3], [1, 2]]
RESPONSES = [[20, 21, 22], [30, 31, 32, 33, 34, 35], [40], [50, 51], []]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: a second torch thread only spin-waits
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return build_model(build_tokenizer(), initializer_range=0.2)


def hand_loop(model, prompt, response, temperature=1.0):
    """One unpadded sequence at a time, the full softmax at every position."""
    logits = model(torch.tensor([prompt + response])).logits[0].float() / temperature  # (T, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[len(prompt) - 1 + j, token] for j, token in enumerate(response)) + torch.zeros(())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equals_a_hand_loop_over_unpadded_sequences(model, temperature):
    with torch.no_grad():
        result = sequence_logprobs(model, PROMPTS, RESPONSES, temperature, micro_batch_size=3)
        expected = torch.stack([hand_loop(model, p, r, temperature) for p, r in zip(PROMPTS, RESPONSES)])
    assert result.logprobs.shape == (5,) and result.logprobs.dtype == torch.float32
    torch.testing.assert_close(result.logprobs, expected, atol=1e-5, rtol=0)
    assert result.lengths.tolist() == [3, 6, 1, 2, 0] and result.logprobs[4] == 0  # empty response: 0


def test_temperature_divides_the_logits(model):
    with torch.no_grad():
        cold = sequence_logprobs(model, PROMPTS, RESPONSES, 0.5).logprobs
        warm = sequence_logprobs(model, PROMPTS, RESPONSES, 2.0).logprobs
        expected = torch.stack([hand_loop(model, p, r, 2.0) for p, r in zip(PROMPTS, RESPONSES)])
    torch.testing.assert_close(warm, expected, atol=1e-5, rtol=0)
    assert (cold[:4] - warm[:4]).abs().min() > 1e-2


def test_invariant_to_micro_batch_size_and_batch_mates(model):
    with torch.no_grad():
        reference = sequence_logprobs(model, PROMPTS, RESPONSES, 1.0, micro_batch_size=len(PROMPTS)).logprobs
        for size in (1, 2, 4):
            torch.testing.assert_close(sequence_logprobs(model, PROMPTS, RESPONSES, 1.0, size).logprobs,
                                       reference, atol=1e-5, rtol=0)
        alone = sequence_logprobs(model, PROMPTS[1:2], RESPONSES[1:2]).logprobs
        reordered = sequence_logprobs(model, PROMPTS[::-1], RESPONSES[::-1]).logprobs
    torch.testing.assert_close(alone, reference[1:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered, reference.flip(0), atol=1e-5, rtol=0)


def test_gradient_flows_in_grad_mode_only(model):
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0])
    model.zero_grad()
    (weights * sequence_logprobs(model, PROMPTS, RESPONSES, 1.0, micro_batch_size=2).logprobs).sum().backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for w, p, r in zip(weights, PROMPTS, RESPONSES):  # the same loss, one unpadded sequence at a time
        if r:
            (w * hand_loop(model, p, r)).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(batched[name], param.grad, atol=1e-4, rtol=1e-4, msg=name)
    assert batched["lm_head.weight"].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert not sequence_logprobs(model, PROMPTS, RESPONSES).logprobs.requires_grad


def test_rejects_mismatched_or_empty_inputs(model):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sequence_logprobs(model, PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(ValueError, match="at least one token"):
        sequence_logprobs(model, [[]], [[5]])
    assert sequence_logprobs(model, [], []).logprobs.shape == (0,)
