"""Tiny Llama-style models and a tokenizer, built locally from a config (no hub).

Tests that need a model call ``save_tiny_model(tmp_path, ...)`` and load the
directory with ``from_pretrained`` like any real checkpoint. The tokenizer is a
byte-level BPE trained in memory on ``CORPUS`` (it knows the judges' label words
``safe``/``unsafe``/``Yes``/``No``/``True``/``False`` as single tokens, with and
without a leading space) and carries a small chat template, so code paths for
chat formatting, BOS handling and left padding are exercised as with a real
model. ``kind="sequence-classification"`` gives a reward-model-shaped network
(``LlamaForSequenceClassification``) from the same config.

vLLM's CPU attention needs ``head_dim >= 64``: pass e.g. ``hidden_size=128,
num_heads=2``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
LABEL_WORDS = ["safe", "unsafe", "Yes", "No", "True", "False"]

_SUBJECTS = ["The user", "The assistant", "A student", "My neighbour", "The answer", "This response"]
_VERBS = ["asks about", "explains", "refuses", "describes", "writes about", "agrees with"]
_OBJECTS = [
    "the capital of France", "a recipe for bread", "how to fix a bicycle", "the history of Rome",
    "violent crimes", "a weapon", "privacy and personal data", "elections", "self-harm",
    "a poem about the sea", "the ground truth", "a math problem", "unit tests in Python",
]
_LABEL_LINES = [
    "The response is {w}.", "Answer: {w}", "{w}", "Is it {w}? {w}.", "I think {w}, not {w}.",
]


def corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
    """A few hundred short English lines covering the judge templates' vocabulary."""
    rng = random.Random(seed)
    lines = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}." for _ in range(num_lines)]
    lines += [p.format(w=w) for w in LABEL_WORDS for p in _LABEL_LINES for _ in range(5)]
    return lines


def build_tokenizer(vocab_size: int = 1024, extra_lines: Iterable[str] = (), model_max_length: int = 2048):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with BOS/EOS/PAD and a chat template.

    Encoding with ``add_special_tokens=True`` prepends ``<s>`` (like Llama); the
    chat template writes ``<s>`` itself, so chat text is encoded without it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus() + list(extra_lines)
    # Repeat the label words with and without a leading space so both variants become single tokens.
    lines += [f"{w} {w}" for w in LABEL_WORDS for _ in range(50)]
    tok.train_from_iterator(lines, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


def build_model(
    tokenizer,
    *,
    kind: Literal["causal-lm", "sequence-classification"] = "causal-lm",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    num_labels: int = 1,
    initializer_range: float = 0.02,
    seed: int = 0,
):
    """A randomly initialised Llama model sized by the arguments (head_dim = hidden_size / num_heads).

    A larger ``initializer_range`` (e.g. 0.2) gives a less uniform next-token
    distribution, so comparisons between tokens are decisive even untrained.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        num_labels=num_labels,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if kind == "causal-lm" else LlamaForSequenceClassification
    return cls(config).float().eval()


def save_tiny_model(out_dir: str | Path, *, tokenizer=None, model=None, **model_kwargs) -> Path:
    """Build (or take) a tokenizer and model and save both, ready for ``from_pretrained(out_dir)``."""
    out_dir = Path(out_dir)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    model = model if model is not None else build_model(tokenizer, **model_kwargs)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def fit_next_token(
    model,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    steps: int = 40,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train a causal LM so that ``prompts[i]`` is followed by token ``targets[i]``.

    Cross-entropy on the last position only, left-padded batches, AdamW.
    Returns the loss per step; leaves the model in eval mode.
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    pad_id = model.config.pad_token_id or 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        idx = rng.sample(range(len(prompts)), min(batch_size, len(prompts)))
        input_ids, attention_mask = left_pad([prompts[i] for i in idx], pad_id)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, -1, :], torch.tensor([targets[i] for i in idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask), both (B, T_max) int64, padded on the left."""
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def tiny_pair():
    """A tiny policy and its π_ref, the same in every process that builds them."""
    import torch

    tokenizer = build_tokenizer()
    reference = build_model(tokenizer, hidden_size=32, num_heads=2, seed=1)
    policy = build_model(tokenizer, hidden_size=32, num_heads=2, seed=1)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the policy has moved away from π_ref: ρ differs from sequence to sequence
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy, reference
