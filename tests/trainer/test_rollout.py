import pytest
import torch

from tests.tiny_models import build_model, build_tokenizer
from cgpo.trainer.config import GenerationConfig
from cgpo.trainer.data import Prompt, render
from cgpo.trainer.logprobs import sequence_logprobs
from cgpo.trainer.rollout import HFRollout, RolloutEngine, Rollouts

MAX_NEW = 12
K = 8


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: a second torch thread only spin-waits
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny Llama whose EOS logit is raised by 4 (a bias on the LM head): about half the samples
    stop before MAX_NEW tokens, so both EOS stopping and the length cut happen."""
    model = build_model(tokenizer, initializer_range=0.2)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.eos_token_id] = 4.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    texts = ["What is the capital of France?", "Hi", "Write a poem about the sea, then explain it."]
    return [render(tokenizer, Prompt(str(i), t)) for i, t in enumerate(texts)]  # different lengths


def rollout(model, tokenizer, prompt_ids, seed=0, k=K, **config):
    config = {"max_new_tokens": MAX_NEW, **config}
    return HFRollout(model, tokenizer, GenerationConfig(**config)).generate(prompt_ids, k, seed)


def test_k_samples_per_prompt_in_prompt_major_order(model, tokenizer, prompt_ids):
    out = rollout(model, tokenizer, prompt_ids)
    assert isinstance(out, Rollouts) and len(out) == len(prompt_ids) * K
    assert out.prompt_index == [i for i in range(len(prompt_ids)) for _ in range(K)]
    assert all(out.prompt_ids[n] == prompt_ids[i] for n, i in enumerate(out.prompt_index))
    assert all(1 <= len(r) <= MAX_NEW for r in out.response_ids)
    assert len(out.text) == len(out.sampling_logprobs) == len(out.finished) == len(out)
    assert all(lp < 0 for lp in out.sampling_logprobs)
    assert isinstance(HFRollout(model, tokenizer, GenerationConfig()), RolloutEngine)


def test_each_sequence_stops_at_its_own_eos(model, tokenizer, prompt_ids):
    out = rollout(model, tokenizer, prompt_ids)
    eos = tokenizer.eos_token_id
    for response, finished in zip(out.response_ids, out.finished):
        assert eos not in response[:-1]  # nothing (no padding) after EOS
        assert finished == (response[-1] == eos)
        assert finished or len(response) == MAX_NEW  # unfinished responses were cut at the limit
    assert 0 < sum(out.finished) < len(out)  # both cases occur in one batch
    assert len({len(r) for r in out.response_ids}) > 2


def test_text_is_the_response_decoded_without_special_tokens(model, tokenizer, prompt_ids):
    out = rollout(model, tokenizer, prompt_ids)
    assert out.text == [tokenizer.decode(r, skip_special_tokens=True) for r in out.response_ids]
    assert not any("</s>" in t for t in out.text) and any(out.finished)


def test_reproducible_given_a_seed(model, tokenizer, prompt_ids):
    first, again = rollout(model, tokenizer, prompt_ids, seed=3), rollout(model, tokenizer, prompt_ids, seed=3)
    other = rollout(model, tokenizer, prompt_ids, seed=4)
    assert first == again
    assert first.response_ids != other.response_ids
    assert len({tuple(r) for r in first.response_ids[:K]}) > 1  # the K samples of a prompt differ


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_sequence_logprobs_at_top_p_1(model, tokenizer, prompt_ids, temperature):
    out = rollout(model, tokenizer, prompt_ids, temperature=temperature)
    with torch.no_grad():
        scored = sequence_logprobs(model, out.prompt_ids, out.response_ids, temperature, micro_batch_size=5)
    torch.testing.assert_close(torch.tensor(out.sampling_logprobs), scored.logprobs, atol=1e-4, rtol=0)
    assert scored.lengths.tolist() == [len(r) for r in out.response_ids]


def test_top_p_samples_from_the_renormalised_nucleus(model, tokenizer, prompt_ids):
    out = rollout(model, tokenizer, prompt_ids, top_p=0.5)
    with torch.no_grad():
        full = sequence_logprobs(model, out.prompt_ids, out.response_ids).logprobs
    assert (torch.tensor(out.sampling_logprobs) >= full - 1e-4).all()  # q renormalises over the nucleus
    assert (torch.tensor(out.sampling_logprobs) > full + 1e-3).any()


def greedy(model, prompt, eos, max_new):
    """Argmax decoding of one unpadded prompt, recomputing the whole prefix at every step."""
    ids = list(prompt)
    for _ in range(max_new):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == eos:
            break
    return ids[len(prompt):]


@pytest.mark.parametrize("max_batch_rows, configured", [(None, None), (4, None), (None, 3)])
def test_tiny_top_p_is_greedy_and_matches_uncached_decoding(model, tokenizer, prompt_ids, max_batch_rows,
                                                            configured):
    config = GenerationConfig(top_p=1e-6, max_new_tokens=MAX_NEW, max_batch_rows=configured)
    out = HFRollout(model, tokenizer, config, max_batch_rows=max_batch_rows).generate(prompt_ids, 2, seed=0)
    with torch.no_grad():
        expected = [greedy(model, p, tokenizer.eos_token_id, MAX_NEW) for p in prompt_ids for _ in range(2)]
    assert out.response_ids == expected  # left padding + KV cache change nothing
    assert out.sampling_logprobs == [0.0] * len(out)  # the nucleus is one token: q = 1


def test_temperature_zero_is_greedy_whatever_the_seed(model, tokenizer, prompt_ids):
    out = rollout(model, tokenizer, prompt_ids, seed=1, k=2, temperature=0)
    assert out.response_ids == rollout(model, tokenizer, prompt_ids, seed=99, k=2, temperature=0).response_ids
    with torch.no_grad():
        expected = [greedy(model, p, tokenizer.eos_token_id, MAX_NEW) for p in prompt_ids for _ in range(2)]
    assert out.response_ids == expected
    assert out.sampling_logprobs == [0.0] * len(out)


def test_generation_leaves_the_training_flag_as_it_was(model, tokenizer, prompt_ids):
    model.train()
    try:
        rollout(model, tokenizer, prompt_ids[:1], k=1)
        assert model.training
    finally:
        model.eval()


def test_rejects_empty_prompts_and_k_below_one(model, tokenizer, prompt_ids):
    engine = HFRollout(model, tokenizer, GenerationConfig(max_new_tokens=2))
    with pytest.raises(ValueError):
        engine.generate([[]], 1, seed=0)
    with pytest.raises(ValueError):
        engine.generate(prompt_ids, 0, seed=0)
    assert len(engine.generate([], 2, seed=0)) == 0


def test_a_prompts_samples_do_not_depend_on_what_it_is_batched_with(model, tokenizer, prompt_ids):
    # what a data-parallel rank relies on: a shard generated with its offset draws the whole batch's samples
    whole = rollout(model, tokenizer, prompt_ids, seed=7)
    assert rollout(model, tokenizer, prompt_ids[2:], seed=7).response_ids != whole.response_ids[2 * K:]
    shards = [HFRollout(model, tokenizer, GenerationConfig(max_new_tokens=MAX_NEW)).generate([p], K, 7, prompt_offset=i)
              for i, p in enumerate(prompt_ids)]
    assert sum((s.response_ids for s in shards), []) == whole.response_ids
    torch.testing.assert_close(torch.tensor(sum((s.sampling_logprobs for s in shards), [])),
                               torch.tensor(whole.sampling_logprobs), atol=1e-4, rtol=1e-5)
    split = HFRollout(model, tokenizer, GenerationConfig(max_new_tokens=MAX_NEW), max_batch_rows=5)
    assert split.generate(prompt_ids, K, 7).response_ids == whole.response_ids


def test_hashed_gumbel_draws_follow_the_distribution():
    from cgpo.trainer.rollout import gumbel_argmax, row_key

    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03, 0.0])
    n = 40_000
    logq = probs.log().expand(n, -1)
    keys = torch.tensor([row_key(11, i, 0) for i in range(n)])
    for t in (0, 1):
        freq = torch.bincount(gumbel_argmax(logq, keys, t), minlength=len(probs)).double() / n
        assert freq[-1] == 0  # a token with probability 0 (log q = -inf) is never drawn
        # 5 standard errors of a binomial proportion
        assert ((freq - probs.double()).abs() <= 5 * (probs.double() * (1 - probs.double()) / n).sqrt()).all()
    first, second = gumbel_argmax(logq, keys, 0), gumbel_argmax(logq, keys, 1)
    agree = (first == second).double().mean().item()  # successive steps are independent draws
    assert abs(agree - (probs.double() ** 2).sum().item()) < 0.02


def test_the_engine_implements_the_protocol_and_switches_settings_on_the_same_weights(model, tokenizer):
    generation = GenerationConfig(max_new_tokens=4)
    engine = HFRollout(model, tokenizer, generation)
    assert isinstance(engine, RolloutEngine)
    greedy = engine.with_generation(GenerationConfig(max_new_tokens=4, temperature=0.0))
    assert greedy.model is model and greedy.config.temperature == 0.0 and engine.config == generation
    assert engine.with_generation(generation) is engine
    engine.sync_weights(model)  # it samples from the policy itself: nothing to copy
    with pytest.raises(ValueError, match="policy it was built on"):
        engine.sync_weights(object())
