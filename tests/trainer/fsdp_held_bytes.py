"""What each rank holds once a tiny Llama is sharded with FSDP2 and stepped (run by torchrun from test_plan.py).

``python -m torch.distributed.run --nproc_per_node 2 tests/trainer/fsdp_held_bytes.py OUT``: for each
case, a policy and its frozen reference are sharded as the trainer shards them (``fully_shard`` on each
decoder layer, then the root), the policy takes one AdamW step, and every rank writes
``OUT/rank-R.json``: per case, the bytes of its local shards (``to_local()``) and of the storage behind
them, for parameters, gradients, AdamW state and the reference.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

CASES = {"untied-fp32": (False, "fp32", None), "tied-bf16": (True, "bf16", None), "lora-bf16": (True, "bf16", 4),
         "lora-fp32": (False, "fp32", 2)}
"""Case name -> (tied embeddings, precision, LoRA rank or None). LoRA cases are built by the trainer's own
``add_adapters`` and ``shard_model`` (every linear of a layer adapted; π_ref is the policy itself)."""


def tiny_config(tied: bool):
    """Odd sizes (RoPE needs an even head_dim), so that two ranks' chunks differ and the padding shows."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=27, intermediate_size=51, num_hidden_layers=2, num_attention_heads=3,
                       num_key_value_heads=1, head_dim=10, vocab_size=97, tie_word_embeddings=tied,
                       max_position_embeddings=64)


def shard(model: torch.nn.Module, bf16: bool) -> None:
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": policy} if policy is not None else {}
    for layer in model.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def held(tensors: list[torch.Tensor]) -> dict[str, int]:
    """Bytes of the local shards, and of the distinct storages behind them."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in local}
    if not local:
        return {"local": 0, "allocated": 0}
    return {"local": sum(t.numel() * t.element_size() for t in local), "allocated": sum(storages.values())}


def run_case(tied: bool, precision: str, lora: int | None) -> dict[str, dict[str, int]]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    policy = LlamaForCausalLM(tiny_config(tied))
    if lora is not None:
        from cgpo.trainer.distributed import shard_model
        from cgpo.trainer.lora import add_adapters

        settings = SimpleNamespace(r=lora, alpha=2.0 * lora, dropout=0.0, target_modules="all-linear")
        policy = shard_model(add_adapters(policy, settings, "tiny", bf16=precision == "bf16"), precision == "bf16")
        reference = []
    else:
        reference = copy.deepcopy(policy).requires_grad_(False)
        if precision == "bf16":
            reference.to(torch.bfloat16)
        shard(policy, precision == "bf16")
        shard(reference, precision == "bf16")
        reference = list(reference.parameters())
    trained = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    ids = torch.randint(0, 97, (2, 9))
    policy(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    params = list(policy.parameters())
    state = [t for p in trained for key, t in optimizer.state[p].items() if key != "step"]
    return {"parameters": held(params), "gradients": held([p.grad for p in trained]), "optimizer": held(state),
            "reference": held(reference),
            "untrained_grads": sum(p.grad is not None for p in params if not p.requires_grad),
            "dtypes": {"parameters": str(trained[0].dtype), "gradients": str(trained[0].grad.dtype)}}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {name: run_case(*case) for name, case in CASES.items()}
    (out / f"rank-{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
