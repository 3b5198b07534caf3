"""Memory plan: the bytes one GPU holds to train a policy with a run config (``cgpo plan``).

The persistent state is counted exactly; the transients are estimated from the architecture.

**Parameters** are listed tensor by tensor as transformers' ``LlamaForCausalLM`` holds them (the
embedding; per decoder layer q, k, v, o, gate, up and down projections, with their biases when the
config asks for them, and two RMSNorm weights; the final norm; ``lm_head`` unless the embeddings are
tied), so a parameter count is ``sum(p.numel() for p in model.parameters())``. LoRA adds, per targeted
linear of ``in`` inputs and ``out`` outputs, ``lora_A`` (r, in) and ``lora_B`` (out, r): r·(in + out)
trainable parameters.

**Persistent state, per GPU** (exact). What is trained is held in fp32: the whole policy, or with LoRA
only the adapters, whose frozen base is held in bf16 under ``precision: bf16`` (fp32 otherwise).
Gradients are fp32 and exist for the trained tensors only; AdamW keeps ``exp_avg`` and ``exp_avg_sq``
in fp32 for each (its ``step`` counters are host scalars, not counted). Under ``precision: bf16`` the
fp32 trained tensors are the master weights the optimizer updates while the forward computes in bf16.
The frozen reference π_ref is a second copy of the policy, fp32 — bf16 under ``parallel: fsdp`` with
``precision: bf16`` —; with LoRA there is none (π_ref is the base with the adapters disabled).
``ddp``: every GPU holds all of it. ``fsdp`` (FSDP2's ``fully_shard``): each tensor is cut on dim 0
into N chunks as ``torch.chunk`` cuts it (chunks of ⌈rows/N⌉ rows, the last ones shorter or empty);
every rank allocates its parameter shard, and its gradient shard, padded to ⌈rows/N⌉ rows, and views
the first rows of its own chunk (``p.to_local()``); AdamW's state is allocated like that view, unpadded.
Rank 0's chunk is the padded one, so rank 0 holds the most, and the plan reports rank 0.

**Transients** (estimates), each alive in one phase of a step; the peak is the persistent state plus
vLLM's share plus the largest phase:

- *all-gathered / cast weights*, alive in every phase that runs the policy. ``fsdp``: the root's
  unsharded parameters (embedding, final norm, ``lm_head``: FSDP2 keeps the root unsharded from forward
  to backward), two decoder layers' (the layer computed and the one prefetched), one layer's unsharded
  fp32 gradient before its reduce-scatter — in the compute dtype, bf16 under ``precision: bf16``
  (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``). π_ref's root is gathered only during
  its own forward passes (the trainer reshards a frozen model after each, trainer/distributed.py), which
  run without grad and so are never the peak. ``ddp`` with
  bf16: autocast's bf16 copies of the fp32 weights that go through a matmul (every linear and
  ``lm_head``; autocast caches them until its region ends); with LoRA only the adapters' (the base is
  bf16 already).
- *training*: the activations one micro-batch's forward keeps for its backward (the trainer runs
  forward and backward per micro-batch of ``optim.micro_batch_size`` sequences; π_ref's log-probs are
  computed without grad and keep nothing). B sequences of T = prompt + ``generation.max_new_tokens``
  tokens; a = 2 bytes under bf16, 4 under fp32; r, the residual stream, fp32 unless the embedding is
  held in bf16 (``fsdp`` or LoRA under bf16). Per decoder layer and token, as autograd saves them with a
  fused SDPA kernel (flash or memory-efficient: no T×T scores): for each of the two RMSNorms its fp32
  input (4H bytes), its normalised output (r·H) and the scaled output the next linears read (a·H; under
  autocast over an fp32 residual each linear saves its own bf16 cast: 3 for q, k, v and 2 for gate, up);
  the queries, the keys and values repeated to every query head (transformers repeats them when the
  batch is padded, as the trainer's micro-batches are) and the attention output, which ``o_proj``
  reads in place (4·heads·head_dim·a), the attention's fp32 log-sum-exp (4·heads); the MLP's gate
  output, its SiLU, the up output and their product (4·I·a). Plus the final norm over all T tokens,
  the B×T×T attention mask (4 bytes an entry), and the logits: only the positions that predict response
  tokens reach ``lm_head`` (L = ``max_new_tokens``; a few more when a micro-batch's prompts differ in
  length), whose output the trainer turns to float32 (trainer/logprobs.py), so
  B·L·V·4 bytes are saved for the log-softmax, and their gradient, as large, exists at the start of the
  backward: 2·B·L·V·4. With activation checkpointing each layer keeps only its input (r·H per token)
  and one layer's activations are recomputed at a time in the backward. With LoRA the saved tensors are
  counted as for the full model (the adapters add r-wide ones only).
- *generation* (``engine: hf``): the KV cache of the rows one rank decodes at once — each task's share of
  ``batch_size`` prompts × K, at most ``generation.max_batch_rows`` — over T tokens, 2 tensors of
  kv_heads·head_dim per layer and token, a bytes each. Evaluation decoding (``eval_max_new_tokens``,
  held-out prompts) is not counted. With ``engine: vllm`` the cache is inside vLLM's share.
- *update*: AdamW's foreach step computes √v for every trained tensor at once (4 bytes per trained
  parameter held); under ``ddp`` the flat fp32 gradient all-reduce before it is as large.

**vLLM**: with ``generation.engine: vllm`` the engine takes ``gpu_memory_utilization`` of the GPU
(``VLLMRollout``'s default, trainer/vllm_rollout.py) for its own weights and KV cache.

Not counted: the CUDA context and the allocator's fragmentation (a few GB in practice), the judges and
reward models when they run embedded on the same GPU, and data-dependent peaks beyond the phases above.
GB means 10⁹ bytes: a GPU sold as "80 GB" has about 85 GB usable, so the fits line errs on the safe side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9

BUILTIN: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True},
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": True},
    "llama-3.2-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": True},
    "llama-3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": False},
    "llama-3.1-70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
                      "tie_word_embeddings": False},
}
"""Architectures by name, from the models' config.json files (SmolLM2-135M-Instruct, Llama 3.2 1B and
3B, Llama 3.1 8B and 70B; head_dim = hidden_size / num_attention_heads in all of them)."""

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linears LoRA may adapt, and its default targets: all of them."""

_LLAMA_LAYOUT = ("llama", "mistral")

Tensors = list[tuple[str, tuple[int, ...]]]
"""(parameter name as ``named_parameters`` gives it, shape)."""


class PlanError(ValueError):
    """A plan's input is out of range or its architecture cannot be read; the message says which."""


@dataclass(frozen=True)
class Architecture:
    """The numbers of a Llama-layout decoder that decide its memory."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int = 0
    """0: hidden_size / num_attention_heads."""
    attention_bias: bool = False
    mlp_bias: bool = False
    name: str = ""
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @classmethod
    def read(cls, values: Mapping[str, Any] | Any, name: str) -> Architecture:
        """From a config.json's values or a transformers config (its text part for a multimodal one)."""
        if hasattr(values, "get_text_config"):
            values = values.get_text_config()
        get = values.get if isinstance(values, Mapping) else lambda key, default=None: getattr(values, key, default)
        needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [key for key in needed if not isinstance(get(key), int)]
        if missing:
            raise PlanError(f"{name}: the model config has no integer {', '.join(missing)}")
        return cls(**{key: get(key) for key in needed},
                   num_key_value_heads=get("num_key_value_heads") or get("num_attention_heads"),
                   tie_word_embeddings=bool(get("tie_word_embeddings", False)), head_dim=get("head_dim") or 0,
                   attention_bias=bool(get("attention_bias", False)), mlp_bias=bool(get("mlp_bias", False)),
                   name=name, model_type=str(get("model_type") or "llama"))


def architecture(spec: str | None, policy: str) -> Architecture:
    """The architecture ``--model-config`` names (a built-in name, a config.json or a model directory),
    else the policy's own config.json, read without its weights (a GGUF policy is converted first)."""
    if spec is None:
        from cgpo.modelfiles import resolve_model

        return _pretrained(resolve_model(policy), policy)
    if spec in BUILTIN:
        return Architecture(**BUILTIN[spec], name=spec)
    path = Path(spec)
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlanError(f"--model-config {spec}: not valid JSON: {exc}") from None
        name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
        return Architecture.read(values if isinstance(values, dict) else {}, name)
    if path.is_dir():
        return _pretrained(str(path), path.name)
    raise PlanError(f"--model-config {spec!r} is neither a config.json, a model directory nor a built-in "
                    f"architecture ({', '.join(BUILTIN)})")


def _pretrained(location: str, name: str) -> Architecture:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise PlanError(f"{name}: cannot read the model's config.json: {exc}") from None
    return Architecture.read(config, Path(name).name or name)


# ------------------------------------------------------------------ tensors


def layer_tensors(arch: Architecture, i: int) -> Tensors:
    """Decoder layer ``i``'s parameters, as ``LlamaDecoderLayer`` holds them."""
    h, inner = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    linears = {"self_attn.q_proj": (q, h, arch.attention_bias), "self_attn.k_proj": (kv, h, arch.attention_bias),
               "self_attn.v_proj": (kv, h, arch.attention_bias), "self_attn.o_proj": (h, q, arch.attention_bias),
               "mlp.gate_proj": (inner, h, arch.mlp_bias), "mlp.up_proj": (inner, h, arch.mlp_bias),
               "mlp.down_proj": (h, inner, arch.mlp_bias)}
    prefix = f"model.layers.{i}."
    tensors: Tensors = []
    for module, (out, into, bias) in linears.items():
        tensors.append((f"{prefix}{module}.weight", (out, into)))
        if bias:
            tensors.append((f"{prefix}{module}.bias", (out,)))
    return tensors + [(f"{prefix}input_layernorm.weight", (h,)), (f"{prefix}post_attention_layernorm.weight", (h,))]


def root_tensors(arch: Architecture) -> Tensors:
    """The parameters outside the decoder layers: embedding, final norm, and ``lm_head`` unless tied."""
    tensors = [("model.embed_tokens.weight", (arch.vocab_size, arch.hidden_size)),
               ("model.norm.weight", (arch.hidden_size,))]
    if not arch.tie_word_embeddings:
        tensors.append(("lm_head.weight", (arch.vocab_size, arch.hidden_size)))
    return tensors


def policy_tensors(arch: Architecture) -> Tensors:
    """Every parameter of ``LlamaForCausalLM`` (a tied ``lm_head`` is the embedding: listed once)."""
    layers = [t for i in range(arch.num_hidden_layers) for t in layer_tensors(arch, i)]
    root = root_tensors(arch)
    return root[:1] + layers + root[1:]


def lora_tensors(arch: Architecture, r: int, targets: tuple[str, ...] = LORA_TARGETS) -> Tensors:
    """The adapters of every targeted linear: ``lora_A`` (r, in) and ``lora_B`` (out, r), as peft names them."""
    tensors: Tensors = []
    for name, shape in policy_tensors(arch):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in targets:
            out, into = shape
            tensors += [(f"{module}.lora_A.weight", (r, into)), (f"{module}.lora_B.weight", (out, r))]
    return tensors


def numel(tensors: Tensors) -> int:
    return sum(math.prod(shape) for _, shape in tensors)


def parameter_count(arch: Architecture) -> int:
    """``sum(p.numel() for p in LlamaForCausalLM(config).parameters())``."""
    return numel(policy_tensors(arch))


# ------------------------------------------------------------------ sharding


def shard_rows(rows: int, world: int, rank: int) -> int:
    """Rows of dim 0 that rank ``rank`` of ``world`` owns: its chunk of ``torch.chunk(t, world)``."""
    chunk = -(-rows // world)
    return max(0, min(chunk, rows - rank * chunk))


def shard_numel(shape: tuple[int, ...], world: int, rank: int, padded: bool) -> int:
    """Elements of a tensor's dim-0 shard on ``rank``: padded to ⌈rows/world⌉ rows (FSDP2's allocation)
    or as the rank's view (``to_local()``)."""
    rows = -(-shape[0] // world) if padded else shard_rows(shape[0], world, rank)
    return rows * math.prod(shape[1:])


def held_bytes(tensors: Tensors, itemsize: int, world: int, rank: int = 0, padded: bool = True) -> int:
    """Bytes of ``tensors``' shards on ``rank`` (``world`` 1: the whole tensors)."""
    return itemsize * sum(shard_numel(shape, world, rank, padded) for _, shape in tensors)


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Lora:
    r: int
    targets: tuple[str, ...] = LORA_TARGETS


def _configured_lora(config: Any) -> Lora | None:
    """The run config's ``lora`` (``all-linear``: every linear of a decoder layer)."""
    lora = getattr(config, "lora", None)
    if lora is None:
        return None
    targets = LORA_TARGETS if lora.target_modules == "all-linear" else tuple(lora.target_modules)
    return Lora(lora.r, targets)


@dataclass(frozen=True)
class Setup:
    """How the run trains: the GPUs, the parallelism and what decides the transients."""

    gpus: int
    gpu_memory: float
    """GB (10⁹ bytes) per GPU."""
    parallel: str = "ddp"
    precision: str = "fp32"
    micro_batch: int = 8
    prompt_tokens: int = 512
    new_tokens: int = 64
    checkpointing: bool = False
    lora: Lora | None = None
    vllm_share: float = 0.0
    """Fraction of the GPU the vLLM engine takes (0: the hf engine)."""
    generation_rows: int = 0
    """Sequences one rank decodes at once with the hf engine."""
    engine: str = "hf"

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.gpus < 1, f"--gpus must be >= 1, got {self.gpus}"),
            (not self.gpu_memory > 0, f"--gpu-memory must be > 0 GB, got {self.gpu_memory}"),
            (self.parallel not in ("ddp", "fsdp"), f"--parallel must be ddp or fsdp, got {self.parallel!r}"),
            (self.prompt_tokens < 1, f"--prompt-tokens must be >= 1, got {self.prompt_tokens}"),
            (self.lora is not None and self.lora.r < 1, f"--lora-r must be >= 1, got {getattr(self.lora, 'r', 0)}"),
            (self.lora is not None and not set(self.lora.targets) <= set(LORA_TARGETS),
             f"--lora-targets must be among {', '.join(LORA_TARGETS)}"),
        ) if bad]
        if problems:
            raise PlanError("; ".join(problems))

    @classmethod
    def from_run(cls, config: Any, *, lora_r: int | None = None, lora_targets: tuple[str, ...] = LORA_TARGETS,
                 **given: Any) -> Setup:
        """The setup of a ``RunConfig``; ``given`` sets ``gpus``, ``gpu_memory``, ``checkpointing``,
        ``prompt_tokens`` and ``parallel`` (None: the config's)."""
        from cgpo.trainer.vllm_rollout import VLLMRollout

        gen, gpus = config.generation, given.get("gpus", 1)
        rows = 0 if gen.engine == "vllm" else max(-(-t.batch_size // max(gpus, 1)) * t.k for t in config.tasks)
        share = 0.0
        if gen.engine == "vllm":
            share = _default(VLLMRollout.__init__, "gpu_memory_utilization")
        given = {k: v for k, v in given.items() if v is not None}
        lora = Lora(lora_r, lora_targets) if lora_r is not None else _configured_lora(config)
        return cls(**{"parallel": config.parallel, **given}, precision=config.precision,
                   micro_batch=config.optim.micro_batch_size, new_tokens=gen.max_new_tokens,
                   lora=lora, vllm_share=share,
                   generation_rows=min(rows, gen.max_batch_rows or rows), engine=gen.engine)

    @property
    def world(self) -> int:
        """Ranks a tensor is sharded over."""
        return self.gpus if self.parallel == "fsdp" else 1

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def compute_bytes(self) -> int:
        return 2 if self.bf16 else 4

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.new_tokens


def _default(function: Any, name: str) -> Any:
    import inspect

    return inspect.signature(function).parameters[name].default


@dataclass(frozen=True)
class States:
    """The persistent bytes one rank holds."""

    parameters: int
    """The policy's parameters: trained fp32 tensors and a frozen LoRA base."""
    master: int
    """Of ``parameters``: the fp32 trained tensors that are master weights (bf16 precision)."""
    gradients: int
    optimizer: int
    reference: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.reference


def trained_tensors(arch: Architecture, setup: Setup) -> Tensors:
    return lora_tensors(arch, setup.lora.r, setup.lora.targets) if setup.lora else policy_tensors(arch)


def held_states(arch: Architecture, setup: Setup, rank: int = 0, padded: bool = True) -> States:
    """The persistent state on ``rank``: as allocated (``padded``: parameter and gradient shards padded,
    as FSDP2 allocates them) or as the rank's views (``to_local()``) — the same under ``ddp``."""
    world = setup.world
    trained = trained_tensors(arch, setup)
    fp32 = held_bytes(trained, 4, world, rank, padded)
    frozen = held_bytes(policy_tensors(arch), setup.compute_bytes, world, rank, padded) if setup.lora else 0
    reference = 0
    if not setup.lora:
        reference = held_bytes(policy_tensors(arch), 2 if setup.bf16 and setup.parallel == "fsdp" else 4, world,
                               rank, padded)
    return States(parameters=fp32 + frozen, master=fp32 if setup.bf16 else 0, gradients=fp32,
                  optimizer=2 * held_bytes(trained, 4, world, rank, padded=False), reference=reference)


@dataclass(frozen=True)
class Plan:
    """Bytes per GPU (rank 0, which holds the most): the persistent states, each transient, the peak."""

    arch: Architecture
    setup: Setup
    states: States
    gathered: int
    """All-gathered (fsdp) or autocast-cast (ddp, bf16) weights, alive whenever the policy runs."""
    activations: int
    """One micro-batch's saved activations, the logits included."""
    logits: int
    kv_cache: int
    update: int
    vllm: int
    phases: dict[str, int]
    """Each phase's transient bytes: training, generation, update."""

    @property
    def peak(self) -> int:
        return self.states.total + self.vllm + max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: self.phases[name])

    @property
    def fits(self) -> bool:
        return self.peak <= self.setup.gpu_memory * GB


def plan(arch: Architecture, setup: Setup) -> Plan:
    """The memory plan of training ``arch`` as ``setup`` says."""
    gathered = gathered_bytes(arch, setup)
    activations, logits = activation_bytes(arch, setup)
    kv_cache = kv_cache_bytes(arch, setup)
    update = held_bytes(trained_tensors(arch, setup), 4, setup.world)
    phases = {"training": gathered + activations, "generation": gathered + kv_cache, "update": update}
    return Plan(arch, setup, held_states(arch, setup), gathered, activations, logits, kv_cache, update,
                int(setup.vllm_share * setup.gpu_memory * GB), phases)


def gathered_bytes(arch: Architecture, setup: Setup) -> int:
    """The weights the forward reads besides the held ones (see the module docstring)."""
    a = setup.compute_bytes
    if setup.parallel == "ddp":
        if not setup.bf16:
            return 0
        if setup.lora:
            return 2 * numel(trained_tensors(arch, setup))
        matmul = [t for t in policy_tensors(arch) if ".layers." in t[0] and not t[0].endswith("layernorm.weight")]
        return 2 * (numel(matmul) + arch.vocab_size * arch.hidden_size)
    layer = layer_tensors(arch, 0)
    adapters = [t for t in trained_tensors(arch, setup) if t[0].startswith("model.layers.0.")] if setup.lora else []
    units = numel(root_tensors(arch)) + min(2, arch.num_hidden_layers) * numel(layer + adapters)
    layer_grads = numel(adapters if setup.lora else layer)
    return a * units + 4 * layer_grads


def activation_bytes(arch: Architecture, setup: Setup) -> tuple[int, int]:
    """(the activations one micro-batch's forward saves for its backward, of which the logits)."""
    b, t, h, kept = setup.micro_batch, setup.tokens, arch.hidden_size, setup.new_tokens
    a = setup.compute_bytes
    r = 2 if setup.bf16 and (setup.parallel == "fsdp" or setup.lora) else 4
    casts = (3, 2) if r == 4 and a == 2 else (1, 1)  # autocast casts a linear's fp32 input once per linear
    heads = arch.num_attention_heads
    norms = 2 * (4 + r) * h + sum(casts) * a * h
    layer = b * t * (norms + 4 * heads * arch.head_dim * a + 4 * heads + 4 * arch.intermediate_size * a)
    if setup.checkpointing:
        stack = arch.num_hidden_layers * b * t * h * r + layer
    else:
        stack = arch.num_hidden_layers * layer
    head = b * t * (4 + r) * h + b * kept * a * h
    logits = 2 * b * kept * arch.vocab_size * 4
    return stack + head + 4 * b * t * t + logits, logits


def kv_cache_bytes(arch: Architecture, setup: Setup) -> int:
    """The hf engine's KV cache for the rows one rank decodes at once."""
    per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * setup.compute_bytes
    return setup.generation_rows * setup.tokens * per_token


# ------------------------------------------------------------------ output


def _gb(n: float) -> str:
    """GB with two decimals; two significant digits below 0.1 GB, so that small states still show."""
    return f"{n / GB:,.2f}" if n == 0 or n >= 0.1 * GB else f"{n / GB:.2g}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _held_as(setup: Setup) -> str:
    return f"1/{setup.world} shard per GPU" if setup.parallel == "fsdp" else "whole, on every GPU"


def _rows(p: Plan) -> list[tuple[str, int, str]]:
    """(what, bytes, how it is held) for each line of the table."""
    s, states, where = p.setup, p.states, _held_as(p.setup)
    trained = "LoRA adapters" if s.lora else "policy"
    base = f"; frozen base in {'bf16' if s.bf16 else 'fp32'}" if s.lora else ""
    reference = ("none: the base with the adapters disabled" if s.lora else
                 f"{'bf16' if s.bf16 and s.parallel == 'fsdp' else 'fp32'}, {where}")
    gathered = ("root + 2 layers unsharded, 1 layer's fp32 gradient" if s.parallel == "fsdp" else
                "bf16 copies of the matmul weights (autocast)")
    update = "AdamW's √v" + (", the gradient all-reduce" if s.parallel == "ddp" and s.gpus > 1 else "")
    return [
        ("policy parameters", states.parameters, f"{trained} in fp32{base}, {where}"),
        ("  of which fp32 master weights", states.master,
         "the trained fp32 tensors; the forward computes in bf16" if s.bf16 else "none: fp32 forward"),
        ("gradients", states.gradients, f"fp32, {trained}, {where}"),
        ("optimizer state (AdamW)", states.optimizer, f"exp_avg + exp_avg_sq in fp32, {where}"),
        ("reference π_ref", states.reference, reference),
        ("all-gathered / cast weights", p.gathered, gathered if p.gathered else "none"),
        ("activations", p.activations,
         f"micro-batch {s.micro_batch} × {s.tokens} tokens, checkpointing {'on' if s.checkpointing else 'off'}"),
        ("  of which logits", p.logits, f"fp32 B·L·V·4 and its gradient, L = {s.new_tokens}"),
        ("KV cache (hf generation)", p.kv_cache,
         f"{s.generation_rows} rows × {s.tokens} tokens" if s.engine == "hf" else "inside vLLM's share"),
        ("update (transient)", p.update, update),
        ("vLLM engine", p.vllm, f"gpu_memory_utilization {s.vllm_share:g}" if s.vllm_share else "engine: hf"),
        ("peak", p.peak, f"persistent + vLLM + the {p.peak_phase} phase"),
    ]


def describe(p: Plan) -> str:
    """The plan's header line: the model and the setup."""
    s, arch = p.setup, p.arch
    lora = f", LoRA r={s.lora.r} ({_count(numel(trained_tensors(arch, s)))} trained)" if s.lora else ""
    note = "" if arch.model_type in _LLAMA_LAYOUT else f" (model_type {arch.model_type}: counted as a Llama layout)"
    return (f"{arch.name or 'policy'}: {_count(parameter_count(arch))} parameters{lora}{note}; {s.gpus} GPU"
            f"{'s' if s.gpus > 1 else ''} × {s.gpu_memory:g} GB, parallel {s.parallel}, precision {s.precision}, "
            f"micro-batch {s.micro_batch}, {s.prompt_tokens} prompt + {s.new_tokens} new tokens, "
            f"activation checkpointing {'on' if s.checkpointing else 'off'}, engine {s.engine}")


def verdict(p: Plan) -> str:
    """Whether the peak fits in one GPU."""
    room = p.setup.gpu_memory * GB - p.peak
    return (f"fits: {'yes' if p.fits else 'no'} — peak {_gb(p.peak)} GB of {p.setup.gpu_memory:g} GB per GPU "
            f"({_gb(abs(room))} GB {'to spare' if p.fits else 'over'})")


def format_table(p: Plan) -> str:
    """The plan as a header line, a table of GB per GPU, and the fits line."""
    lines = [describe(p), "", "| per GPU | GB | held as |", "|---|---:|---|"]
    lines += [f"| {what} | {_gb(n)} | {how} |" for what, n, how in _rows(p)]
    return "\n".join([*lines, "", verdict(p)])


ROW_HEADER = ("| model | params | GPUs | parallel | ckpt | LoRA | weights | grads | AdamW | ref | gathered "
              "| activations | KV | update | vLLM | peak | fits |\n" + "|---" * 6 + "|" + "---:|" * 10 + "---|")


def format_row(p: Plan, header: bool = True) -> str:
    """The plan as one markdown row (GB per GPU), under ``ROW_HEADER`` when ``header``."""
    s, st = p.setup, p.states
    cells = [p.arch.name or "policy", _count(parameter_count(p.arch)), f"{s.gpus}×{s.gpu_memory:g} GB", s.parallel,
             "on" if s.checkpointing else "off", f"r={s.lora.r}" if s.lora else "—",
             *(_gb(n) for n in (st.parameters, st.gradients, st.optimizer, st.reference, p.gathered, p.activations,
                                p.kv_cache, p.update, p.vllm, p.peak)), "yes" if p.fits else "**no**"]
    row = "| " + " | ".join(cells) + " |"
    return f"{ROW_HEADER}\n{row}" if header else row
