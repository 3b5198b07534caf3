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

Without ``WORLD_SIZE`` (or with 1) everything here is a no-op for a single process.
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

    @property
    def main(self) -> bool:
        """Rank 0 writes metrics, logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> Dist:
        """Join the process group torchrun describes in the environment (NCCL on CUDA, else gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not torch.distributed.is_initialized():
            cuda = device_for(device, local_rank).type == "cuda"
            if cuda:
                torch.cuda.set_device(local_rank)
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        return cls(rank, world, local_rank)

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

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks (a missing gradient counts as zeros)."""
        if not self.enabled:
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
        """Raise if the replicas' weights differ (they must be bit-identical after every step)."""
        if not self.enabled:
            return
        fingerprint = _fingerprint(model)
        prints = self.gather(fingerprint)
        if any(p != prints[0] for p in prints):
            raise RuntimeError(f"data-parallel replicas diverged: weight fingerprints per rank {prints}")

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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
