"""Throughput of the ``math`` judge against raw math-verify.

    .venv/bin/python benchmarks/bench_math.py [--n 4000] [--workers N] [--json out.json]

Workloads (synthetic, seeded):

* ``gsm8k``     GSM8K-style reasoning ending "The final answer is 1,234." — half right, half
                wrong; some answers with thousands commas, "$", markdown bold.
* ``latex_frac`` ``\\boxed{\\frac{a}{b}}`` against a gold ``\\frac{c}{d}`` (equal or not; unreduced forms).
* ``symbolic``  ``\\boxed{\\frac{\\sqrt{a}}{b}}``-style answers that only math-verify can decide:
                measures the worker pool itself (all items go through it).

For each, three measurements on the same items, as wall-clock items/s, per core (divided by the
cores the path can use) and per CPU-second (parent + workers; the per-core figure of an idle machine):

* judge: ``MathJudge.judge`` on the whole batch (pool started and warm beforehand): every item
  is extracted and compared in the worker processes (step 1), the items the numeric fast path
  cannot decide go to math-verify there too (step 2);
* pool: the math-verify path alone, every item forced through the worker pool
  (``WorkerPool(verify_answer).map`` on the extracted answers) — what items cost when
  the numeric fast path cannot decide them;
* raw: math-verify in this process, ``verify(parse(gold), parse(response))`` per item
  (gold wrapped in ``$...$`` when bare parsing finds nothing), default SIGALRM timeouts.

Cores: the worker count for the judge and the pool; 1 for raw. Judge verdicts are checked
against raw math-verify. Linux only (/proc for the workers' CPU time). Each run uses the
same items: the workers' number-parsing caches are warm after the first (as they are for
repeated reference answers in training).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgpo.services.judges.base import Sample  # noqa: E402
from cgpo.services.judges.math import MathJudge, compare_numbers, verify_answer, warm_up  # noqa: E402
from cgpo.services.judges.pool import WorkerPool, default_workers  # noqa: E402

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Randy"]


def gsm8k(rng: random.Random, n: int) -> list[Sample]:
    samples = []
    for _ in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        gold = a * b + rng.randint(0, 5000)
        pred = gold if rng.random() < 0.5 else gold + rng.choice([-1, 1]) * rng.randint(1, 50)
        text = f"{pred:,}" if pred >= 1000 and rng.random() < 0.4 else str(pred)
        if rng.random() < 0.15:
            text = "$" + text
        final = f"The final answer is {text}."
        if rng.random() < 0.1:
            final = f"**{final}**"
        name = rng.choice(NAMES)
        reasoning = (
            f"{name} buys {a} boxes with {b} pencils each, so {a} * {b} = {a * b} pencils. "
            f"Then {name} finds {gold - a * b} more, for {a * b} + {gold - a * b} = {gold} in total. "
        )
        samples.append(Sample(prompt="q", response=reasoning + final, metadata={"answer": str(gold)}))
    return samples


def latex_frac(rng: random.Random, n: int) -> list[Sample]:
    samples = []
    for _ in range(n):
        p, q, k = rng.randint(1, 99), rng.randint(2, 99), rng.randint(1, 5)
        pp, qq = (p * k, q * k) if rng.random() < 0.5 else (p + 1, q)
        frac = f"\\frac{{{pp}}}{{{qq}}}"
        response = f"Dividing, we get ${frac}$. Therefore the answer is $\\boxed{{{frac}}}$."
        samples.append(Sample(prompt="q", response=response, metadata={"answer": f"\\frac{{{p}}}{{{q}}}"}))
    return samples


def symbolic(rng: random.Random, n: int) -> list[Sample]:
    samples = []
    for _ in range(n):
        a, b = rng.choice([2, 3, 5, 6, 7]), rng.randint(2, 9)
        right = rng.random() < 0.5
        pred = f"\\frac{{\\sqrt{{{a}}}}}{{{b}}}" if right else f"\\frac{{\\sqrt{{{a}}}}}{{{b + 1}}}"
        response = f"Rationalising the denominator, the answer is $\\boxed{{{pred}}}$."
        samples.append(Sample(prompt="q", response=response, metadata={"answer": f"\\frac{{\\sqrt{{{a}}}}}{{{b}}}"}))
    return samples


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by this process and the processes ``pids``."""
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(fn, pids: list[int], repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, mean CPU seconds, last output) of ``fn()`` over ``repeats`` runs."""
    best, cpu, out = float("inf"), 0.0, None
    for _ in range(repeats):
        cpu0, start = cpu_s(pids), time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
        cpu += cpu_s(pids) - cpu0
    return best, cpu / repeats, out


def raw_math_verify(samples: list[Sample]) -> list[str]:
    """Raw math-verify, one process: parse gold (bare, else in $...$), parse the whole response, verify."""
    from math_verify import parse, verify

    verdicts = []
    for s in samples:
        gold = parse(s.metadata["answer"]) or parse(f"${s.metadata['answer']}$")
        verdicts.append("pass" if verify(gold, parse(s.response)) else "fail")
    return verdicts


def row(path: str, n: int, wall_s: float, cpu: float, cores: int) -> dict:
    return {
        "path": path,
        "items_per_s": round(n / wall_s, 1),
        "cores": cores,
        "items_per_s_per_core": round(n / wall_s / cores, 1),
        "items_per_cpu_s": round(n / cpu, 1) if cpu > 0 else None,
    }


def run(name: str, samples: list[Sample], judge: MathJudge, pool: WorkerPool, workers: int, repeats: int) -> dict:
    n = len(samples)
    extracted = [judge.extract(s.response) or "" for s in samples]
    expected = [str(s.metadata["answer"]) for s in samples]
    fast = sum(compare_numbers(e, x) is not None for e, x in zip(expected, extracted, strict=True))
    judge_pids = judge._pool.pids if judge._pool else []  # bench-only peek: count the judge's workers' CPU

    judge_wall, judge_cpu, verdicts = measure(lambda: judge.judge(samples), judge_pids, repeats)
    pool_wall, pool_cpu, results = measure(lambda: pool.map(list(zip(expected, extracted))), pool.pids, repeats)
    raw_wall, raw_cpu, raw_verdicts = measure(lambda: raw_math_verify(samples), [], 1)
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    judge_verdicts = [v.verdict for v in verdicts]
    return {
        "workload": name,
        "items": n,
        "fast_path_share": round(fast / n, 3),
        "pass_rate": round(judge_verdicts.count("pass") / n, 3),
        "errors": judge_verdicts.count("error"),
        "disagreements_with_raw": sum(a != b for a, b in zip(judge_verdicts, raw_verdicts, strict=True)),
        "paths": [
            row("MathJudge", n, judge_wall, judge_cpu, workers),
            row("pool only (math-verify path)", n, pool_wall, pool_cpu, workers),
            row("raw math-verify, 1 process", n, raw_wall, raw_cpu, 1),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="items per workload")
    parser.add_argument("--workers", type=int, default=default_workers(), help="math-verify worker processes")
    parser.add_argument("--repeats", type=int, default=3, help="judge runs per workload (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    rng = random.Random(args.seed)
    judge = MathJudge(workers=args.workers)
    pool = WorkerPool(verify_answer, workers=args.workers, initializer=warm_up)
    judge.setup()
    pool.setup()
    try:
        results = [
            run("gsm8k", gsm8k(rng, args.n), judge, pool, args.workers, args.repeats),
            run("latex_frac", latex_frac(rng, args.n), judge, pool, args.workers, args.repeats),
            run("symbolic", symbolic(rng, args.n // 4), judge, pool, args.workers, args.repeats),
        ]
    finally:
        judge.close()
        pool.close()

    print(f"CPUs: {os.cpu_count()}  workers: {args.workers}  load average (1 min): {os.getloadavg()[0]:.2f}")
    print(f"{'workload':<11} {'path':<29} {'items/s':>9} {'cores':>5} {'items/s/core':>12} {'items/CPU-s':>11}")
    for r in results:
        for p in r["paths"]:
            print(
                f"{r['workload']:<11} {p['path']:<29} {p['items_per_s']:>9.0f} {p['cores']:>5} "
                f"{p['items_per_s_per_core']:>12.0f} {p['items_per_cpu_s'] or float('nan'):>11.0f}"
            )
        print(
            f"{'':<11} fast path {100 * r['fast_path_share']:.0f}%, pass rate {r['pass_rate']:.2f}, "
            f"errors {r['errors']}, disagreements with raw math-verify {r['disagreements_with_raw']}"
        )
    report = {"cpus": os.cpu_count(), "workers": args.workers, "load_1m": os.getloadavg()[0], "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
