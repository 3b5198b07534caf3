"""Throughput of the LLM judges' HF backend on a tiny local model, by batch size.

    .venv/bin/python benchmarks/bench_llm.py [--n 128] [--batch-sizes 1,4,16,32] [--json out.json]

The model is the tests' tiny Llama (tests/tiny_models.py: byte-level BPE, chat
template), by default hidden 128, 2 layers, 2 heads (head_dim 64), fp32 on
CPU, untrained. Items are ``safety`` judge samples with responses of 10-120
words (prompts ≈ 150-400 tokens), so batches really pad. For each batch size:
``LLMJudge.judge`` on all items (render + tokenize + forward), one warm-up pass
first. This measures the judge machinery and padding cost, not a real judge
model's speed: a 7-8B judge is ~10^4 times the FLOPs per token.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgpo.services.judges.base import Sample  # noqa: E402
from cgpo.services.judges.llm import TEMPLATES, build_llm_judges  # noqa: E402
from cgpo.services.judges.llm.templates import DEFAULT_SAFETY_CATEGORIES  # noqa: E402
from tests.tiny_models import build_tokenizer, corpus, save_tiny_model  # noqa: E402


def samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    words = " ".join(corpus(seed=seed)).split()
    return [
        Sample(rng.choice(words[:50]) + "?", " ".join(rng.choices(words, k=rng.randint(10, 120))))
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="items per measurement")
    parser.add_argument("--batch-sizes", default="1,4,16,32")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    import torch

    lines = [line for t in TEMPLATES.values() for line in t.text.splitlines()] + list(DEFAULT_SAFETY_CATEGORIES)
    items = samples(args.n)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model(
            tmp, tokenizer=build_tokenizer(extra_lines=lines * 3),
            hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
        )
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            judge = {j.name: j for j in build_llm_judges(str(model_dir), "hf", batch_size=batch_size)}["safety"]
            judge.judge(items[: batch_size * 2])  # warm-up: load, first forward passes
            tokens = sum(len(judge.encode(s)) for s in items)
            start = time.perf_counter()
            verdicts = judge.judge(items)
            seconds = time.perf_counter() - start
            assert len(verdicts) == len(items) and all(v.verdict != "error" for v in verdicts)
            results.append({
                "batch_size": batch_size, "items": len(items), "seconds": round(seconds, 3),
                "items_per_s": round(len(items) / seconds, 1), "prompt_tokens_per_s": round(tokens / seconds),
            })
            print(f"batch {batch_size:3d}: {results[-1]['items_per_s']:8.1f} items/s  "
                  f"{results[-1]['prompt_tokens_per_s']:8d} prompt tokens/s", flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "model": vars(args) | {"json": None}}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
