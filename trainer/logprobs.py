"""Sequence log-probabilities log π(a | s) = Σ_t log π(a_t | s, a_<t) (docs/method.md §1).

The trainer's log π_w (with grad) and log π_ref (without) both come from here, at the sampling
temperature, so ρ = log π_w − log π_ref compares the same distributions (docs/method.md §4 [ours]).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple


class SequenceLogprobs(NamedTuple):
    logprobs: Any
    """(N,) float32: Σ over response tokens of log softmax(logits / T)[token]; grad when enabled."""
    lengths: Any
    """(N,) int64: response lengths in tokens."""


def sequence_logprobs(model: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                      temperature: float = 1.0, micro_batch_size: int = 8, lockstep: Any = None) -> SequenceLogprobs:
    """log π(response_i | prompt_i) at ``temperature`` for each of N (prompt, response) pairs.

        log π(a | s) = Σ_{t=1..|a|} log_softmax(z_t / T)[a_t],   z_t = logits after s, a_<t

    Rows are right-padded (positions 0.. as unpadded, real tokens never attend to padding), grouped by
    length into micro-batches of ``micro_batch_size`` and returned in input order; only the positions
    that predict response tokens go through the LM head and the softmax (in float32). An empty response
    scores 0. The result carries grad iff grad mode is on; the graph of every micro-batch is kept until
    backward, so to bound activation memory when training, call this once per micro-batch and backward
    each (the losses are sums over samples).
    """
    import torch

    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (the first response token needs a prefix)")
    if temperature <= 0 or micro_batch_size < 1:
        raise ValueError("temperature must be > 0 and micro_batch_size >= 1")
    device = model.device
    lengths = torch.tensor([len(r) for r in response_ids], dtype=torch.long, device=device)  # (N,)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    starts = range(0, len(order), micro_batch_size)
    stand_ins = lockstep.max_int(len(starts)) - len(starts) if lockstep is not None else 0  # agreed first
    parts = []
    for start in starts:
        idx = order[start:start + micro_batch_size]
        parts.append(_micro_batch(model, [prompt_ids[i] for i in idx], [response_ids[i] for i in idx],
                                  temperature))
    with torch.no_grad():
        for _ in range(stand_ins):
            _micro_batch(model, [[0]], [[0]], temperature)
    if not parts:
        return SequenceLogprobs(torch.zeros(0, device=device), lengths)
    inverse = torch.empty(len(order), dtype=torch.long, device=device)
    inverse[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
    return SequenceLogprobs(torch.cat(parts).index_select(0, inverse), lengths)


def _micro_batch(model: Any, prompts: list[Sequence[int]], responses: list[Sequence[int]],
                 temperature: float) -> Any:
    import torch

    device = model.device
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=device)  # (B, T)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)  # (B, T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    # Position t predicts token t+1; the first response token is predicted at len(prompt) - 1.
    first = min(len(p) for p in prompts) - 1
    keep = width - first  # logits for positions first..width-1 (the last one is unused)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=keep).logits[:, :-1, :].float() / temperature  # (B, L, V), L = keep - 1
    targets = input_ids[:, first + 1:]  # (B, L): the token each kept position predicts
    offsets = torch.arange(first + 1, width, device=device)  # (L,) index of each target in the row
    starts = torch.tensor([len(p) for p in prompts], device=device)[:, None]  # (B, 1)
    ends = torch.tensor([len(row) for row in rows], device=device)[:, None]  # (B, 1)
    is_response = (offsets >= starts) & (offsets < ends)  # (B, L)
    token_logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)  # (B, L)
    return torch.where(is_response, token_logprobs, 0.0).sum(-1)  # (B,)


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """``model`` in eval mode (dropout off) for the duration, its training flag restored afterwards.

    The update's log-prob passes run in it: pass 1 (ρ, the selection, ∂L/∂log π_w) and pass 2 (the
    backward) must evaluate the same deterministic function, or the two-pass gradient is not ∇L.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
