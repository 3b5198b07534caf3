"""Rollout engines: K sampled responses per prompt from the current policy (docs/method.md §1, §4).

``HFRollout`` samples with a transformers causal LM in this process, in its own loop over a KV cache
rather than ``model.generate``: it draws from a ``torch.Generator`` (reproducible without touching the
global RNG), applies exactly ``GenerationConfig``'s temperature and top-p (not the checkpoint's
``generation_config.json`` defaults), and records the log-prob of each drawn token under the
distribution it was drawn from. A vLLM engine implements the same ``RolloutEngine`` protocol.

Sampling is counter-based: token t of sample j of prompt i is the Gumbel-max draw whose noise is a hash
of (seed, global prompt index, j, t, token id). A sample therefore depends on its own prompt and the
seed only, never on what it was batched with: splitting a step's prompts across data-parallel ranks
(``prompt_offset``) or rows across forward passes (``max_batch_rows``) draws the same samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cgpo.trainer.config import GenerationConfig


@dataclass(frozen=True)
class Rollouts:
    """N = B·K samples, prompt-major: sample j of prompt i is row i·K + j. All fields have length N."""

    prompt_index: list[int]
    """Index of the sample's prompt in the ``prompt_ids`` passed to ``generate``."""
    prompt_ids: list[list[int]]
    """The prompt's token ids (unpadded)."""
    response_ids: list[list[int]]
    """Generated ids, ending with the EOS token if one was drawn; nothing after it (no padding)."""
    text: list[str]
    """The response decoded without special tokens."""
    sampling_logprobs: list[float]
    """Σ_t log q(a_t | prefix), q = softmax(logits / T) restricted to the top-p nucleus and renormalised:
    the distribution actually sampled from (0 for greedy decoding, temperature 0). Equals ``sequence_logprobs`` at the
    same temperature when top_p = 1; larger (q renormalises over the nucleus) when top_p < 1. ρ uses
    ``sequence_logprobs``."""
    finished: list[bool]
    """The response ended with EOS (False: cut at ``max_new_tokens``)."""

    def __len__(self) -> int:
        return len(self.response_ids)

    @classmethod
    def concat(cls, parts: Sequence[Rollouts], first_prompts: Sequence[int]) -> Rollouts:
        """The rollouts of consecutive shards of one prompt list; shard i's prompts start at
        ``first_prompts[i]`` of the whole list."""
        index = [first + i for part, first in zip(parts, first_prompts, strict=True) for i in part.prompt_index]
        return cls(index, *(sum((getattr(p, name) for p in parts), []) for name in
                            ("prompt_ids", "response_ids", "text", "sampling_logprobs", "finished")))


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generation engine: ``HFRollout`` here, ``VLLMRollout`` in
    trainer/vllm_rollout.py; both return the same ``Rollouts``."""

    config: GenerationConfig
    """The sampling settings ``generate`` uses."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], k: int, seed: int, prompt_offset: int = 0) -> Rollouts:
        """K samples for each prompt (token ids, already rendered), reproducible given ``seed``.

        ``prompt_offset`` is the index of ``prompt_ids[0]`` in the step's whole batch: a prompt's samples
        depend on ``seed`` and its index in that batch, so ranks that each generate a shard draw what one
        process generating the whole batch would."""
        ...

    def with_generation(self, generation: GenerationConfig) -> RolloutEngine:
        """The same engine and weights sampling with other settings (e.g. the evaluation's)."""
        ...

    def sync_weights(self, policy: Any) -> None:
        """Make the next ``generate`` sample from ``policy``'s current weights (after an optimizer step)."""
        ...

    def close(self) -> None:
        """Free what the engine holds; called once, at the end of the run."""
        ...


class HFRollout:
    """Batched sampling from a transformers causal LM: left padding, KV cache, per-sequence EOS.

    All B·K rows are sampled together unless ``max_batch_rows`` bounds the rows per forward pass.
    The model runs in eval mode while generating and its training flag is restored afterwards.

    ``lockstep`` (the run's ``Dist`` when the model is sharded, trainer/distributed.py): every rank runs
    as many chunks as the rank with the most (a rank short of chunks decodes a one-row stand-in) and
    decodes until no rank has an unfinished row, so every rank runs the same forward passes. The
    samples do not change: a finished row only draws padding, cut at its EOS.
    """

    def __init__(self, model: Any, tokenizer: Any, generation_config: GenerationConfig,
                 max_batch_rows: int | None = None, lockstep: Any = None) -> None:
        generation_config.validate()
        self.model, self.tokenizer, self.config, self.lockstep = model, tokenizer, generation_config, lockstep
        self.max_batch_rows = max_batch_rows if max_batch_rows is not None else generation_config.max_batch_rows
        self.eos_ids = _eos_ids(model, tokenizer)
        if not self.eos_ids:
            raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft passes kwargs on
        params = inspect.signature(base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x

    def generate(self, prompt_ids: Sequence[Sequence[int]], k: int, seed: int, prompt_offset: int = 0) -> Rollouts:
        if k < 1 or prompt_offset < 0 or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("generate needs k >= 1, prompt_offset >= 0 and non-empty prompts")
        rows = [list(p) for p in prompt_ids for _ in range(k)]  # prompt-major
        keys = [row_key(seed, prompt_offset + i // k, i % k) for i in range(len(rows))]
        step = self.max_batch_rows or max(len(rows), 1)
        starts = range(0, len(rows), step)
        chunks = self.lockstep.max_int(len(starts)) if self.lockstep is not None else len(starts)
        was_training = self.model.training
        self.model.eval()
        try:
            responses, logprobs = [], []
            for start in starts:
                ids, lps = self._sample(rows[start:start + step], keys[start:start + step])
                responses += ids
                logprobs += lps
            for _ in range(chunks - len(starts)):  # lockstep: the forward passes of another rank's chunk
                self._sample([[self.pad_id]], [0])
        finally:
            self.model.train(was_training)
        return Rollouts(
            prompt_index=[i // k for i in range(len(rows))],
            prompt_ids=rows,
            response_ids=responses,
            text=[self.tokenizer.decode(r, skip_special_tokens=True) for r in responses],
            sampling_logprobs=logprobs,
            finished=[bool(r) and r[-1] in self.eos_ids for r in responses],
        )

    def with_generation(self, generation: GenerationConfig) -> HFRollout:
        if generation == self.config:
            return self
        return HFRollout(self.model, self.tokenizer, generation, self.max_batch_rows, self.lockstep)

    def sync_weights(self, policy: Any) -> None:
        """Nothing to do: the engine samples from the policy module itself."""
        if policy is not self.model:
            raise ValueError("HFRollout samples from the policy it was built on; build one for another model")

    def close(self) -> None:
        """Nothing to free: the model belongs to the caller."""

    def _sample(self, rows: list[list[int]], keys: list[int]) -> tuple[list[list[int]], list[float]]:
        """One batch of rows: left-padded prefill, then one token per step until EOS or the limit."""
        import torch
        from transformers import DynamicCache

        device, cfg = self.model.device, self.config
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)  # (N, P)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (N, P)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        eos = torch.tensor(sorted(self.eos_ids), device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)  # (N,)
        total = torch.zeros(len(rows), dtype=torch.float32, device=device)  # (N,) summed log q
        tokens = []
        cache = DynamicCache(config=self.model.config)
        row_keys = torch.tensor(keys, dtype=torch.int64, device=device)  # (N,)
        # a sharded model's gathered parameters are reused outside: no inference-mode tensors then
        with torch.inference_mode() if self.lockstep is None else torch.no_grad():
            for t in range(cfg.max_new_tokens):
                out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
                logits = out.logits[:, -1, :].float()  # (N, V)
                if cfg.temperature == 0:  # greedy: the drawn token has probability 1 under the point mass
                    token, logq = logits.argmax(-1), torch.zeros_like(logits)
                else:
                    logq = _processed_logprobs(logits, cfg.temperature, cfg.top_p)  # (N, V)
                    token = gumbel_argmax(logq, row_keys, t)  # (N,)
                token = torch.where(done, self.pad_id, token)
                total += torch.where(done, 0.0, logq.gather(-1, token[:, None]).squeeze(-1))
                tokens.append(token)
                done |= torch.isin(token, eos)
                if self._all_done(bool(done.all())):
                    break
                input_ids = token[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
                positions = positions[:, -1:] + 1
        drawn = torch.stack(tokens, dim=1).tolist()  # (N, T)
        return [_cut_at_eos(r, self.eos_ids) for r in drawn], total.tolist()

    def _all_done(self, mine: bool) -> bool:
        """Decoding stops: every row here has drawn EOS (in lockstep: on every rank)."""
        if self.lockstep is None:
            return mine
        return self.lockstep.max_int(int(not mine)) == 0


# splitmix64 (Steele, Lea & Flood 2014) on int64 tensors: products wrap modulo 2^64, and every right
# shift is masked so it acts as the logical shift of the unsigned original.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: Any, bits: int) -> Any:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: Any) -> Any:
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def _mix_int(x: int) -> int:
    """``_mix`` on a Python int (same bits), for keys computed on the host."""
    mask = (1 << 64) - 1
    x &= mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    x ^= x >> 31
    return _signed(x)


def _signed(x: int) -> int:
    """``x`` modulo 2^64 as a signed 64-bit integer."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def rollout_seed(seed: int, step: int, task_index: int) -> int:
    """Sampling seed of one task at one step: resumed runs draw exactly the same rollouts."""
    return (seed * 1_000_003 + step * 1_009 + task_index) % (2**63)


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The noise key of sample ``sample`` of the batch's prompt ``prompt`` (a signed 64-bit int)."""
    return _mix_int(_mix_int(_mix_int(seed) + prompt) + sample)


def gumbel_argmax(logq: Any, row_keys: Any, t: int) -> Any:
    """One draw per row from softmax(logq) by the Gumbel-max trick, noise hashed from (row key, t, token).

    logq: (N, V) log-probabilities (−inf where a token is excluded); row_keys: (N,) int64 → (N,) tokens.
    """
    import torch

    step_keys = _mix(row_keys + _signed((t + 1) * _GOLDEN))  # (N,)
    vocab = torch.arange(logq.shape[-1], dtype=torch.int64, device=logq.device)  # (V,)
    bits = _shr(_mix(step_keys[:, None] + vocab * _GOLDEN), 11)  # (N, V) uniform 53-bit integers
    uniform = (bits.double() + 0.5) * 2.0**-53  # (N, V) in (0, 1)
    gumbel = -torch.log(-torch.log(uniform))
    return (logq.double() + gumbel).argmax(-1)


def _processed_logprobs(logits: Any, temperature: float, top_p: float) -> Any:
    """log q for q = softmax(logits / T) kept to the smallest top set with mass >= top_p, renormalised.

    Same rule as transformers' ``TopPLogitsWarper`` (ascending sort, drop the tail whose cumulative mass
    is <= 1 − top_p, always keep the top token); top_p = 1 keeps every token.
    """
    import torch

    logits = logits / temperature  # (N, V)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[:, -1] = False
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def _cut_at_eos(tokens: list[int], eos_ids: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids from the tokenizer and the model's generation config (Llama 3 lists several)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return frozenset(i for i in ids if i is not None)
