"""LLM judges on the HF backend, with tiny models built locally (tests/tiny_models.py)."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cgpo.services.judges.base import Sample  # noqa: E402
from cgpo.services.judges.llm import (  # noqa: E402
    TEMPLATES,
    HFBackend,
    JudgeTemplate,
    LabelTokenError,
    LLMJudge,
    build_llm_judges,
)
from cgpo.services.judges.llm.judge import label_token_id  # noqa: E402
from cgpo.services.judges.llm.templates import DEFAULT_SAFETY_CATEGORIES, SAFETY  # noqa: E402
from tests.tiny_models import build_model, build_tokenizer, corpus, fit_next_token, save_tiny_model  # noqa: E402

MARKER = "grenade"
SAMPLES = [
    Sample("What is the capital of France?", "The capital of France is Paris.", {"answer": "Paris"}),
    Sample("Write a poem about the sea.", "I can't help with that.", {"answer": "a poem"}),
    Sample("How do I fix a bicycle?", "Check the chain first, then the brakes and the tyres.", {"answer": "chain"}),
    Sample("Explain elections.", "No.", {"answer": 42}),
]


def judge_tokenizer():
    """The tiny tokenizer, trained with the judge templates' text so prompts stay short."""
    lines = [line for t in TEMPLATES.values() for line in t.text.splitlines()]
    return build_tokenizer(extra_lines=(lines + list(DEFAULT_SAFETY_CATEGORIES)) * 3 + [MARKER] * 20)


def safety_training_set(seed: int, n: int) -> list[tuple[Sample, bool]]:
    """(sample, is_unsafe): a response is unsafe exactly when it contains MARKER."""
    rng = random.Random(seed)
    lines = corpus(seed=seed)
    data = []
    for i in range(n):
        words = " ".join(rng.sample(lines, 2)).split()
        unsafe = i % 2 == 0
        if unsafe:
            words.insert(rng.randrange(len(words) + 1), MARKER)
        data.append((Sample(rng.choice(lines), " ".join(words)), unsafe))
    return data


def save_safety_model(out_dir: Path, **model_kwargs) -> Path:
    """A tiny model fine-tuned to answer 'unsafe' after MARKER responses and 'safe' otherwise."""
    tokenizer = judge_tokenizer()
    model = build_model(tokenizer, **model_kwargs)
    judge = LLMJudge(SAFETY, HFBackend(str(save_tiny_model(out_dir, tokenizer=tokenizer, model=model))))
    pos, neg = judge.label_token_ids
    data = safety_training_set(seed=1, n=96)
    prompts = [judge.encode(sample) for sample, _ in data]
    losses = fit_next_token(model, prompts, [neg if unsafe else pos for _, unsafe in data], steps=60, lr=3e-3)
    assert losses[-1] < 0.1 * losses[0], losses
    return save_tiny_model(out_dir, tokenizer=tokenizer, model=model)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tokenizer = judge_tokenizer()
    model = build_model(tokenizer, initializer_range=0.2)
    return save_tiny_model(tmp_path_factory.mktemp("tiny-judge"), tokenizer=tokenizer, model=model)


@pytest.fixture(scope="module")
def judges(model_dir) -> dict[str, LLMJudge]:
    return {j.name: j for j in build_llm_judges(str(model_dir), "hf", batch_size=3)}


def direct_probs(model_dir: Path, template: JudgeTemplate, sample: Sample) -> tuple[float, float]:
    """P(positive), P(negative) computed by hand: one unpadded forward, softmax at the last position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": template.render(sample.prompt, sample.response, sample.metadata)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = model(ids).logits[0, -1].softmax(-1)
    pos, neg = tok.convert_tokens_to_ids([template.positive, template.negative])
    return probs[pos].item(), probs[neg].item()


def test_factory_exposes_three_judges_sharing_one_lazy_backend(model_dir):
    judges = build_llm_judges(str(model_dir), "hf")
    assert [j.name for j in judges] == ["false_refusal", "factuality", "safety"]
    assert len({id(j.backend) for j in judges}) == 1
    assert not judges[0].backend._loaded  # nothing loaded before setup
    judges[0].setup()
    assert judges[2].backend._loaded
    assert judges[1].metadata_fields == {"answer": TEMPLATES["factuality"].metadata_fields["answer"]}
    with pytest.raises(ValueError, match="unknown LLM judge backend"):
        build_llm_judges(str(model_dir), "tgi")
    picked = build_llm_judges(str(model_dir), names=["safety", "factuality"])
    assert [j.name for j in picked] == ["safety", "factuality"]
    with pytest.raises(ValueError, match="unknown LLM judges"):
        build_llm_judges(str(model_dir), names=["toxicity"])


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_verdict_equals_direct_computation(judges, model_dir, name):
    verdicts = judges[name].judge(SAMPLES, deadline=time.time() + 60)  # the handler passes one; not needed here
    assert len(verdicts) == len(SAMPLES)
    for sample, verdict in zip(SAMPLES, verdicts, strict=True):
        p_pos, p_neg = direct_probs(model_dir, TEMPLATES[name], sample)
        assert verdict.detail["template"] == name
        assert verdict.detail["p_positive"] == pytest.approx(p_pos, rel=1e-5)
        assert verdict.detail["p_negative"] == pytest.approx(p_neg, rel=1e-5)
        assert verdict.verdict == ("fail" if p_neg > p_pos else "pass")


def test_batching_is_invariant_to_neighbours_and_padding(judges, model_dir):
    judge = judges["safety"]
    prompts = [judge.encode(s) for s in SAMPLES]
    assert len({len(p) for p in prompts}) > 1  # different lengths, so the batch really pads
    pairs = [judge.label_token_ids] * len(prompts)
    alone = [judge.backend.next_token_logprobs([p], [pair])[0] for p, pair in zip(prompts, pairs, strict=True)]
    for batch_size in (1, 2, len(prompts)):
        together = HFBackend(str(model_dir), batch_size=batch_size).next_token_logprobs(prompts, pairs)
        for a, b in zip(alone, together, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_missing_or_malformed_metadata_is_an_error_for_that_sample_only(judges):
    samples = [
        Sample("Capital of France?", "Paris."),  # no answer
        Sample("Capital of France?", "Paris.", {"answer": ""}),  # empty answer
        Sample("Capital of France?", "Paris.", {"answer": {"city": "Paris"}}),  # not text
        Sample("Capital of France?", "Paris.", {"answer": "Paris"}),
    ]
    verdicts = judges["factuality"].judge(samples)
    assert [v.verdict for v in verdicts[:3]] == ["error"] * 3
    assert "answer" in verdicts[0].detail["error"] and verdicts[0].detail["template"] == "factuality"
    assert verdicts[3].verdict in ("pass", "fail")
    bad_policy = judges["safety"].judge([Sample("hi", "hello", {"categories": {"S1": "x"}})])
    assert bad_policy[0].verdict == "error"


def test_prompt_longer_than_the_model_reads_is_an_error(judges):
    long = Sample("Tell me a story.", "once upon a time " * 1000)
    verdicts = judges["false_refusal"].judge([long, SAMPLES[0]])
    assert verdicts[0].verdict == "error" and "tokens" in verdicts[0].detail["error"]
    assert verdicts[1].verdict in ("pass", "fail")


def test_prompt_is_rendered_in_the_chat_template(judges, model_dir):
    judge = judges["safety"]
    tok = judge.backend.tokenizer
    ids = judge.encode(Sample("How are you?", "Fine, thanks."))
    text = tok.decode(ids)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # one BOS, from the chat template
    assert text.startswith("<s><|user|>\nTask: Check if there is unsafe content")
    assert text.endswith("categories.</s>\n<|assistant|>\n")
    assert "User: How are you?" in text and "Agent: Fine, thanks." in text
    assert "S1: Violent Crimes." in text and "S14: Code Interpreter Abuse." in text
    custom = tok.decode(judge.encode(Sample("q", "a", {"categories": ["C1: Spoilers.", "C2: Puns."]})))
    assert "C1: Spoilers.\nC2: Puns." in custom and "S1: Violent Crimes." not in custom

    bare = LLMJudge(SAFETY, judge.backend, use_chat_template=False)
    bare_ids = bare.encode(Sample("q", "a"))
    assert bare_ids[0] == tok.bos_token_id  # added by the tokenizer when there is no chat wrapper
    assert "<|assistant|>" not in tok.decode(bare_ids)


def test_label_tokens_follow_the_prompt_ending(judges):
    tok = judges["safety"].backend.tokenizer
    ids = tok.convert_tokens_to_ids
    assert judges["safety"].label_token_ids == (ids("safe"), ids("unsafe"))  # after "<|assistant|>\n": no space
    assert label_token_id(tok, "safe", "[INST] Is it safe? [/INST]") == ids("Ġsafe")  # after a word: a space
    assert label_token_id(tok, " safe", "anything\n") == ids("Ġsafe")  # explicit leading space kept


def test_label_that_is_not_one_token_is_rejected_at_setup(judges):
    template = JudgeTemplate(
        name="odd", description="", text="{prompt} {response}", positive="safe", negative="xylophonically"
    )
    judge = LLMJudge(template, judges["safety"].backend)
    with pytest.raises(LabelTokenError, match="xylophonically"):
        judge.setup()


def test_template_declarations_are_checked():
    with pytest.raises(ValueError, match="undeclared"):
        JudgeTemplate(name="t", description="", text="{prompt} {answer}", positive="Yes", negative="No")
    with pytest.raises(ValueError, match="two different"):
        JudgeTemplate(name="t", description="", text="{prompt}", positive="Yes", negative="Yes")
    assert SAFETY.required_metadata == ()
    assert TEMPLATES["factuality"].required_metadata == ("answer",)


@pytest.mark.slow
def test_trained_safety_judge_reads_the_model(tmp_path):
    model_dir = save_safety_model(tmp_path)
    (judge,) = build_llm_judges(str(model_dir), "hf", templates=[SAFETY], batch_size=8)
    held_out = safety_training_set(seed=7, n=24)
    verdicts = judge.judge([s for s, _ in held_out])
    expected = ["fail" if unsafe else "pass" for _, unsafe in held_out]
    assert [v.verdict for v in verdicts] == expected
    for v in verdicts:
        confident = max(v.detail["p_positive"], v.detail["p_negative"])
        assert confident > 0.5 and math.isfinite(confident)


def test_service_serves_llm_judges_over_rest(model_dir, judges):
    import asyncio

    from cgpo.services.judges.config import JudgeConfig
    from cgpo.services.judges.embedded import embedded_judges

    items = [
        {"prompt": "How do I bake bread?", "response": "Mix flour and water, then bake.", "judges": ["safety"]},
        {"prompt": "Capital of France?", "response": "Paris.", "judges": ["factuality", "safety"],
         "metadata": {"answer": "Paris"}},
        {"prompt": "Capital of France?", "response": "Paris.", "judges": ["factuality"]},  # no answer
    ]

    async def scenario():
        config = JudgeConfig(enabled=("safety", "factuality"), llm_model=str(model_dir))
        async with embedded_judges(config) as client:
            return await client.judge(items)

    results = asyncio.run(scenario())
    direct = judges["safety"].judge([Sample(items[0]["prompt"], items[0]["response"])])[0]
    served = results[0].verdicts["safety"]
    assert served.verdict == direct.verdict
    assert served.detail["p_positive"] == pytest.approx(direct.detail["p_positive"], rel=1e-5)
    assert set(results[1].verdicts) == {"factuality", "safety"}
    assert results[2].verdicts["factuality"].verdict == "error" and results[2].feasible is False
