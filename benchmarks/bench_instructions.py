"""Throughput of the ``instructions`` judge on IFEval's 541 GPT-4 responses.

Two paths per mode (strict, loose), each with one warm-up pass, then
``--repeats`` timed passes over all 541 samples (we report the median):

* ``judge``: ``InstructionsJudge.judge``, as served: the samples go to ``--workers``
  worker processes (a hard time limit each), results come back in order;
* ``1 core``: ``judge_one`` on every sample in this process, one thread — the
  checks' own cost, items/s per core.

CPU time counts this process and the workers.

    .venv/bin/python benchmarks/bench_instructions.py [--repeats 7] [--workers N] [--data DIR]

Target: >= 2,000 items/s per core in strict mode (IFEval's reference checker does ~600/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from cgpo.services.judges.base import Sample
from cgpo.services.judges.instructions import InstructionsJudge
from cgpo.services.judges.instructions.judge import judge_one, load_tables
from cgpo.services.judges.pool import default_workers

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "ifeval"


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


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by this process and the processes ``pids`` (Linux)."""
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(run, samples: list[Sample], repeats: int, pids: list[int]) -> dict[str, float]:
    """Median wall and CPU seconds of one pass ``run(samples)``, and the items/s they give."""
    run(samples)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), cpu_s(pids)
        verdicts = run(samples)
        wall.append(time.perf_counter() - w0)
        cpu.append(cpu_s(pids) - c0)
    passed = sum(v.verdict == "pass" for v in verdicts)
    wall_s, cpu_s_ = statistics.median(wall), statistics.median(cpu)
    return {
        "items": len(samples),
        "passed": passed,
        "wall_s": round(wall_s, 4),
        "items_per_s": round(len(samples) / wall_s, 1),
        "items_per_cpu_s": round(len(samples) / cpu_s_, 1),
        "best_items_per_s": round(len(samples) / min(wall), 1),
        "us_per_item": round(wall_s / len(samples) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per mode and path")
    parser.add_argument("--workers", type=int, default=default_workers(), help="worker processes of the judge")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with IFEval's jsonl files")
    args = parser.parse_args()

    judge = InstructionsJudge(workers=args.workers)
    setup_t0 = time.perf_counter()
    judge.setup()
    load_tables()  # for the in-process path
    setup_s = time.perf_counter() - setup_t0
    paths = {
        "judge": (judge.judge, judge._pool.pids),  # bench-only peek: count the workers' CPU
        "1 core": (lambda samples: [judge_one(s) for s in samples], []),
    }
    try:
        results = {f"{mode}/{path}": measure(run, load_samples(args.data, mode == "strict"), args.repeats, pids)
                   for mode in ("strict", "loose") for path, (run, pids) in paths.items()}
    finally:
        judge.close()

    print(f"instructions judge, {args.repeats} passes per mode, {args.workers} workers, setup {setup_s:.2f} s, "
          f"load average (1 min) {os.getloadavg()[0]:.2f}")
    print(f"{'mode/path':<14}{'items':>7}{'passed':>8}{'items/s':>10}{'items/cpu-s':>13}{'best':>9}{'us/item':>9}")
    for name, r in results.items():
        print(f"{name:<14}{r['items']:>7}{r['passed']:>8}{r['items_per_s']:>10}{r['items_per_cpu_s']:>13}"
              f"{r['best_items_per_s']:>9}{r['us_per_item']:>9}")
    print(json.dumps({"benchmark": "instructions", "workers": args.workers, "setup_s": round(setup_s, 3), **results}))


if __name__ == "__main__":
    main()
