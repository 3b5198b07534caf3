"""The demo's models, built locally: a word-level tokenizer, a small Llama policy fine-tuned on the
world's demonstrations (SFT), and reward models trained with ``cgpo rm train``'s trainer.

The tokenizer splits on whitespace only, so every word with its punctuation ("can't", "7.") is one
token and decoding (words joined by single spaces) gives back exactly the text the judges must read.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} {{ eos_token }} "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tokenizer(lines: Iterable[str]) -> Any:
    """A whitespace word-level ``PreTrainedTokenizerFast`` over the words of ``lines``, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in lines for w in line.split()})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + [w for w in words if w not in SPECIAL_TOKENS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS[4:],
                                   chat_template=CHAT_TEMPLATE, model_max_length=512)


def build_model(tokenizer: Any, *, kind: str = "causal-lm", hidden_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised Llama (head_dim = hidden_size / num_heads), causal LM or one-output RM."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, head_dim=hidden_size // num_heads,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, num_labels=1)
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if kind == "causal-lm" else LlamaForSequenceClassification
    return cls(config).float()


def encode_example(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of the chat-rendered prompt + response + EOS, number of prompt ids)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, len(prompt_ids)


def sft(model: Any, tokenizer: Any, examples: list[dict[str, str]], *, steps: int, batch_size: int = 32,
        lr: float = 3e-3, seed: int = 0, log: Any = None) -> list[float]:
    """Supervised fine-tuning: cross-entropy on the response tokens (and EOS) of each example.

    Right-padded batches, AdamW with linear decay; returns the loss per step and leaves eval mode on.
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = [encode_example(tokenizer, e["prompt"], e["response"]) for e in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    pad = tokenizer.pad_token_id
    losses = []
    model.train()
    for step in range(steps):
        batch = [encoded[i] for i in rng.sample(range(len(encoded)), min(batch_size, len(encoded)))]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([[-100] * start + ids[start:] + [-100] * (width - len(ids)) for ids, start in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log is not None and (step + 1) % max(steps // 4, 1) == 0:
            log(f"  sft step {step + 1}/{steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def save(model: Any, tokenizer: Any, out: Path) -> Path:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
