"""Throughput of the ``instructions`` judge on IFEval's 541 GPT-4 responses.

One process, one thread: items/s here is items/s per core. Each mode (strict,
loose) gets one warm-up pass (``setup`` has already loaded langdetect's
profiles and the Punkt model), then ``--repeats`` timed passes over all 541
samples; we report the median pass and CPU time per item.

    .venv/bin/python benchmarks/bench_instructions.py [--repeats 7] [--data DIR]

Target: >= 2,000 items/s in strict mode (IFEval's reference checker does ~600/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from services.judges.base import Sample
from services.judges.instructions import InstructionsJudge

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ifeval"


def load_samples(data: Path, strict: bool) -> list[Sample]:
    """IFEval's prompts with the GPT-4 responses (same order), as judge samples."""
    inputs = [json.loads(line) for line in (data / "input_data.jsonl").read_text().splitlines()]
    responses = [
        json.loads(line)["response"]
        for line in (data / "input_response_data_gpt4_20231107_145030.jsonl").read_text().splitlines()
    ]
    return [
        Sample(i["prompt"], r, {"instruction_id_list": i["instruction_id_list"], "kwargs": i["kwargs"],
                                "strict": strict})
        for i, r in zip(inputs, responses)
    ]


def measure(judge: InstructionsJudge, samples: list[Sample], repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of one pass over ``samples``, and the items/s they give."""
    judge.judge(samples)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        verdicts = judge.judge(samples)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    passed = sum(v.verdict == "pass" for v in verdicts)
    wall_s, cpu_s = statistics.median(wall), statistics.median(cpu)
    return {
        "items": len(samples),
        "passed": passed,
        "wall_s": round(wall_s, 4),
        "items_per_s": round(len(samples) / wall_s, 1),
        "items_per_cpu_s": round(len(samples) / cpu_s, 1),
        "best_items_per_s": round(len(samples) / min(wall), 1),
        "us_per_item": round(wall_s / len(samples) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per mode")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with IFEval's jsonl files")
    args = parser.parse_args()

    judge = InstructionsJudge()
    setup_t0 = time.perf_counter()
    judge.setup()
    setup_s = time.perf_counter() - setup_t0
    results = {mode: measure(judge, load_samples(args.data, mode == "strict"), args.repeats)
               for mode in ("strict", "loose")}

    print(f"instructions judge, {args.repeats} passes per mode, setup {setup_s:.2f} s")
    print(f"{'mode':<8}{'items':>7}{'passed':>8}{'items/s':>10}{'items/cpu-s':>13}{'best':>9}{'us/item':>9}")
    for mode, r in results.items():
        print(f"{mode:<8}{r['items']:>7}{r['passed']:>8}{r['items_per_s']:>10}{r['items_per_cpu_s']:>13}"
              f"{r['best_items_per_s']:>9}{r['us_per_item']:>9}")
    print(json.dumps({"benchmark": "instructions", "setup_s": round(setup_s, 3), **results}))


if __name__ == "__main__":
    main()
