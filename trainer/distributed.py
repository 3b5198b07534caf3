"""Data parallelism over ``torch.distributed`` (``torchrun --nproc_per_node N -m cgpo.trainer CONFIG``).

Every rank holds the whole policy and reference. Each step, every task's batch of B prompts is split
into contiguous shards, one per rank; a rank generates, scores and computes log-probs for its shard
only. The sequence-level results (a few floats per sample) are then gathered, so every rank evaluates
the task's loss on the whole batch exactly as one process would (CODPO and CRRAFT select within a
prompt's K samples, and CRPG averages over all N), and backpropagates ∂L/∂log π_w through the policy
for its own sequences. Parameter gradients are summed across ranks in one flat all-reduce per dtype;
clipping and the optimizer step then see the same gradient on every rank, so the replicas stay
bit-identical (``check_in_sync`` verifies it at every checkpoint).

This is DDP's contract — replicas, sharded data, summed gradients — done by hand rather than through
``DistributedDataParallel``: the two-pass update runs a different number of backward passes on each
rank (only sequences with a non-zero gradient are recomputed), which DDP's per-backward hooks cannot
synchronise.

With ``parallel: fsdp`` (``sharded``) the policy and the reference are sharded with FSDP2 instead
(``shard_model``): every forward all-gathers a layer's parameters and every backward reduce-scatters its
gradients, so every rank must run the same number of forward and backward passes, in the same order, or
the run hangs. The passes whose count depends on a rank's data are therefore run in ``lockstep``:
generation decodes until no rank has an unfinished row and pads its chunks, the log-prob passes pad
their micro-batches, and the update pads its backward passes with zero-weight ones, each to the largest
count over the ranks (``max_int``). FSDP averages the gradients over the ranks where the method sums
them, so ``all_reduce_grads`` multiplies by the world size (gloo has no pre-multiplied reduction).

Without ``WORLD_SIZE`` (or with 1) everything here is a no-op for a single process, except that
``parallel: fsdp`` still shards, over a process group of one: the same code path, checkpoint format and
memory layout as on N ranks (and what a vLLM engine syncs from).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank ``rank`` of ``world`` (0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False
    """The models are sharded with FSDP2 (``parallel: fsdp``) rather than replicated."""
    owns_group: bool = False
    """This process group was started here (and is ended by ``close``), not found already running."""

    @property
    def main(self) -> bool:
        """Rank 0 writes metrics, logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def lockstep(self) -> bool:
        """Passes that run collectives (a sharded model's forward and backward) must run equally often
        on every rank."""
        return self.enabled and self.sharded

    @classmethod
    def from_env(cls, device: str = "auto", sharded: bool = False) -> Dist:
        """Join the process group torchrun describes in the environment (NCCL on CUDA, else gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and not sharded:
            return cls()
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        owns = not torch.distributed.is_initialized()
        if owns:
            cuda = device_for(device, local_rank).type == "cuda"
            if cuda:
                torch.cuda.set_device(local_rank)
            backend = "nccl" if cuda else "gloo"
            if world <= 1:  # sharded in one process: a group of one, no rendezvous
                torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0,
                                                     world_size=1)
            else:
                torch.distributed.init_process_group(backend)
        return cls(rank, max(world, 1), local_rank, sharded, owns)

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of n items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects; meant for small per-sample results)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long, device=collective_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks (a missing gradient counts as zeros). Sharded,
        FSDP has already reduced them to their mean: multiply by the world size."""
        if not self.enabled:
            return
        if self.sharded:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.world)
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            if p.requires_grad:
                by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in group:
                size = p.numel()
                p.grad = flat[offset:offset + size].view_as(p).clone()
                offset += size

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Raise if the replicas' weights differ (they must be bit-identical after every step). Sharded
        models have no replicas."""
        if not self.enabled or self.sharded:
            return
        fingerprint = _fingerprint(model)
        prints = self.gather(fingerprint)
        if any(p != prints[0] for p in prints):
            raise RuntimeError(f"data-parallel replicas diverged: weight fingerprints per rank {prints}")

    def share_rng(self) -> None:
        """Every rank continues with rank 0's torch RNG state."""
        if self.enabled:
            torch.set_rng_state(self.gather(torch.get_rng_state())[0])

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def collective_device() -> torch.device:
    """Where a tensor for a collective must live: this rank's GPU under NCCL (which takes no CPU tensors),
    the CPU under gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_model(model: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    """``model`` sharded in place with FSDP2: each decoder layer, then the root (embeddings, final norm,
    head). ``bf16``: the layers compute in bf16 and reduce gradients in fp32 over fp32 parameters
    (``MixedPrecisionPolicy``); a frozen model is simply held in bf16 then. A frozen model's root is
    resharded after each forward (FSDP would keep it gathered for a backward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    trainable = any(p.requires_grad for p in model.parameters())
    if bf16 and not trainable:  # the weights only: RoPE's frequencies (buffers) stay fp32, as the policy's
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": policy} if policy is not None else {}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if not trainable:  # FSDP keeps a root unsharded after its forward, for a backward a frozen model never runs
        model.register_forward_hook(lambda module, args, output: module.reshard())
    return model


def materialize(model: torch.nn.Module, build: Any, device: torch.device, dist: Dist) -> None:
    """Give a sharded skeleton (built on the meta device, then ``fully_shard``-ed) memory on ``device`` —
    each rank its own shards — and the weights of ``build()``, which only rank 0 calls (on the host):
    its state is broadcast tensor by tensor into every rank's shards (``broadcast_from_rank0``), each
    tensor cast to the skeleton's dtype, and its buffers (RoPE's ``inv_freq``, which no state dict
    holds) broadcast after it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=device)
    source = build() if dist.main else None
    state = {}
    if source is not None:
        dtypes = {name: t.dtype for name, t in model.state_dict().items()}
        state = {name: t.to(dtypes.get(name, t.dtype)) for name, t in source.state_dict().items()}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    buffers = dict(source.named_buffers()) if source is not None else {}
    del source, state
    for name, buffer in model.named_buffers():
        value = buffers[name].to(buffer.device, buffer.dtype) if dist.main else torch.empty_like(buffer)
        if dist.enabled:
            torch.distributed.broadcast(value, src=0)
        with torch.no_grad():
            buffer.copy_(value)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a transformers causal LM (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``...)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found")
    return layers


def checkpoint_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Activation checkpointing of every decoder layer, in place: under grad a layer keeps only its inputs
    and is run again in the backward (non-reentrant ``torch.utils.checkpoint``); without grad it runs as
    before. The layer's forward is wrapped rather than the module replaced, so parameter names (and so
    checkpoints) do not change, and it holds in eval mode, where the update runs (transformers' own
    ``gradient_checkpointing_enable`` acts in training mode only)."""
    import types

    from torch.utils.checkpoint import checkpoint

    def recomputed(layer: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = type(layer).forward  # looked up on the layer it is bound to: a deep copy runs its own weights
        if not torch.is_grad_enabled():
            return forward(layer, *args, **kwargs)
        return checkpoint(forward, layer, *args, use_reentrant=False, **kwargs)

    for layer in decoder_layers(model):
        layer.forward = types.MethodType(recomputed, layer)
    return model


def device_for(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _fingerprint(model: torch.nn.Module) -> tuple[float, float]:
    """Sum and sum of squares of every weight, in float64: equal iff the replicas agree (practically)."""
    total, squares = 0.0, 0.0
    with torch.no_grad():
        for p in model.parameters():
            x = p.detach().double()
            total += float(x.sum())
            squares += float((x * x).sum())
    return total, squares


SINGLE = Dist()
"""One process, no process group."""
