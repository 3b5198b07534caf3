"""Throughput of the sandboxed `code` judge on HumanEval-sized programs.

Ten small HumanEval-style problems (solution + check(candidate)), some solutions
wrong on purpose. Measures, in one run on the same machine:
  * sandboxed: ``CodeJudge.judge`` on a batch (fork-server zygotes, one per worker);
  * baseline:  one unsandboxed ``subprocess.run([sys.executable, "-c", program])`` per
    program, with as many concurrent runs as the judge has workers; and the same with
    ``-I -S`` (no site-packages scan: the interpreter flags the zygote itself uses).

    python benchmarks/bench_code.py [--samples 2000] [--workers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from cgpo.services.judges.base import Sample
from cgpo.services.judges.code import CodeJudge

# name -> (entry point, response with a ```python block, check source, solution is correct)
PROBLEMS: dict[str, tuple[str, str, str, bool]] = {
    "has_close_elements": ("has_close_elements", '''
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
''', '''
def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
''', True),
    "separate_paren_groups": ("separate_paren_groups", '''
from typing import List


def separate_paren_groups(paren_string: str) -> List[str]:
    result, current, depth = [], [], 0
    for c in paren_string:
        if c == "(":
            depth += 1
            current.append(c)
        elif c == ")":
            depth -= 1
            current.append(c)
            if depth == 0:
                result.append("".join(current))
                current = []
    return result
''', '''
def check(candidate):
    assert candidate('(()()) ((())) () ((())()())') == ['(()())', '((()))', '()', '((())()())']
    assert candidate('() (()) ((())) (((())))') == ['()', '(())', '((()))', '(((())))']
    assert candidate('(()(())((())))') == ['(()(())((())))']
    assert candidate('( ) (( )) (( )( ))') == ['()', '(())', '(()())']
''', True),
    "below_zero": ("below_zero", '''
from typing import List


def below_zero(operations: List[int]) -> bool:
    balance = 0
    for op in operations:
        balance += op
    return balance < 0
''', '''
def check(candidate):
    assert candidate([]) == False
    assert candidate([1, 2, -3, 1, 2, -3]) == False
    assert candidate([1, 2, -4, 5, 6]) == True
    assert candidate([1, -1, 2, -2, 5, -5, 4, -4]) == False
''', False),  # only checks the final balance
    "mean_absolute_deviation": ("mean_absolute_deviation", '''
from typing import List


def mean_absolute_deviation(numbers: List[float]) -> float:
    mean = sum(numbers) / len(numbers)
    return sum(abs(x - mean) for x in numbers) / len(numbers)
''', '''
def check(candidate):
    assert abs(candidate([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6
    assert abs(candidate([1.0, 2.0, 3.0, 4.0]) - 1.0) < 1e-6
    assert abs(candidate([1.0, 2.0, 3.0, 4.0, 5.0]) - 6.0/5.0) < 1e-6
''', True),
    "intersperse": ("intersperse", '''
from typing import List


def intersperse(numbers: List[int], delimeter: int) -> List[int]:
    result = []
    for n in numbers:
        result.append(n)
        result.append(delimeter)
    return result
''', '''
def check(candidate):
    assert candidate([], 7) == []
    assert candidate([5, 6, 3, 2], 8) == [5, 8, 6, 8, 3, 8, 2]
    assert candidate([2, 2, 2], 2) == [2, 2, 2, 2, 2]
''', False),  # trailing delimiter
    "parse_nested_parens": ("parse_nested_parens", '''
from typing import List


def parse_nested_parens(paren_string: str) -> List[int]:
    def depth(group: str) -> int:
        d = best = 0
        for c in group:
            d += 1 if c == "(" else -1
            best = max(best, d)
        return best
    return [depth(g) for g in paren_string.split(" ") if g]
''', '''
def check(candidate):
    assert candidate('(()()) ((())) () ((())()())') == [2, 3, 1, 3]
    assert candidate('() (()) ((())) (((())))') == [1, 2, 3, 4]
    assert candidate('(()(())((())))') == [4]
''', True),
    "sum_product": ("sum_product", '''
from typing import List, Tuple


def sum_product(numbers: List[int]) -> Tuple[int, int]:
    total, product = 0, 0
    for n in numbers:
        total += n
        product *= n
    return total, product
''', '''
def check(candidate):
    assert candidate([]) == (0, 1)
    assert candidate([1, 1, 1]) == (3, 1)
    assert candidate([100, 0]) == (100, 0)
    assert candidate([3, 5, 7]) == (3 + 5 + 7, 3 * 5 * 7)
''', False),  # product starts at 0
    "rolling_max": ("rolling_max", '''
from typing import List


def rolling_max(numbers: List[int]) -> List[int]:
    result, running = [], None
    for n in numbers:
        running = n if running is None else max(running, n)
        result.append(running)
    return result
''', '''
def check(candidate):
    assert candidate([]) == []
    assert candidate([1, 2, 3, 4]) == [1, 2, 3, 4]
    assert candidate([4, 3, 2, 1]) == [4, 4, 4, 4]
    assert candidate([3, 2, 3, 100, 3]) == [3, 3, 3, 100, 100]
''', True),
    "factorize": ("factorize", '''
from typing import List


def factorize(n: int) -> List[int]:
    import math
    factors, i = [], 2
    while i <= int(math.sqrt(n) + 1):
        if n % i == 0:
            factors.append(i)
            n //= i
        else:
            i += 1
    if n > 1:
        factors.append(n)
    return factors
''', '''
def check(candidate):
    assert candidate(2) == [2]
    assert candidate(4) == [2, 2]
    assert candidate(8) == [2, 2, 2]
    assert candidate(3 * 19) == [3, 19]
    assert candidate(3 * 19 * 3 * 19) == [3, 3, 19, 19]
    assert candidate(3 * 2 * 3) == [2, 3, 3]
''', True),
    "largest_divisor": ("largest_divisor", '''
def largest_divisor(n: int) -> int:
    for i in range(n, 0, -1):
        if n % i == 0:
            return i
''', '''
def check(candidate):
    assert candidate(3) == 1
    assert candidate(7) == 1
    assert candidate(10) == 5
    assert candidate(100) == 50
''', False),  # returns n itself
}


def samples() -> list[tuple[Sample, bool]]:
    out = []
    for name, (entry_point, solution, check, correct) in PROBLEMS.items():
        response = f"Here is a solution for `{name}`:\n\n```python{solution}```\n\nIt runs in linear time."
        out.append((Sample(f"Write {name}.", response, {"test": check, "entry_point": entry_point}), correct))
    return out


def program_text(sample: Sample) -> str:
    from cgpo.services.judges.code import extract_code

    return f"{extract_code(sample.response)}\n{sample.metadata['test']}\ncheck({sample.metadata['entry_point']})\n"


def bench_sandboxed(batch: list[Sample], workers: int) -> tuple[float, list[str], dict]:
    judge = CodeJudge(workers=workers)
    judge.setup()
    try:
        judge.judge(batch[: workers * 8])  # warm up the zygotes
        started = time.perf_counter()
        verdicts = judge.judge(batch)
        elapsed = time.perf_counter() - started
        return elapsed, [v.verdict for v in verdicts], judge._pool.isolation
    finally:
        judge.close()


def bench_subprocess(batch: list[Sample], workers: int, flags: tuple[str, ...] = ()) -> tuple[float, list[str]]:
    programs = [program_text(s) for s in batch]

    def run(program: str) -> str:
        done = subprocess.run([sys.executable, *flags, "-c", program], capture_output=True, timeout=5)
        return "pass" if done.returncode == 0 else "fail"

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, programs[: workers * 4]))  # warm the page cache
        started = time.perf_counter()
        verdicts = list(pool.map(run, programs))
        return time.perf_counter() - started, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="programs per measurement")
    parser.add_argument("--baseline-samples", type=int, default=400, help="programs per subprocess baseline")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    pool = samples()
    batch = [pool[i % len(pool)][0] for i in range(args.samples)]
    expected = ["pass" if pool[i % len(pool)][1] else "fail" for i in range(args.samples)]

    sandbox_s, sandbox_verdicts, isolation = bench_sandboxed(batch, args.workers)
    base_n = min(args.baseline_samples, args.samples)
    base_s, base_verdicts = bench_subprocess(batch[:base_n], args.workers)
    bare_s, bare_verdicts = bench_subprocess(batch[:base_n], args.workers, ("-I", "-S"))
    assert sandbox_verdicts == expected, "sandboxed verdicts differ from the known answers"
    assert base_verdicts == bare_verdicts == expected[:base_n], "baseline verdicts differ from the known answers"

    rows = [
        ("sandboxed CodeJudge (zygotes)", args.samples, sandbox_s, args.samples / sandbox_s),
        ("unsandboxed subprocess per program", base_n, base_s, base_n / base_s),
        ("unsandboxed subprocess, python -I -S", base_n, bare_s, base_n / bare_s),
    ]
    print(f"{'method':38s} {'programs':>8s} {'seconds':>8s} {'runs/s':>8s}   (workers={args.workers}, "
          f"{os.cpu_count()} cores)")
    for name, n, seconds, rate in rows:
        print(f"{name:38s} {n:8d} {seconds:8.2f} {rate:8.1f}")
    result = {
        "benchmark": "code_judge_throughput",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "problems": len(PROBLEMS),
        "pass_fraction": sum(e == "pass" for e in expected) / len(expected),
        "isolation": isolation,
        "sandboxed": {"programs": args.samples, "seconds": round(sandbox_s, 3),
                      "runs_per_s": round(args.samples / sandbox_s, 1)},
        "subprocess_baseline": {"programs": base_n, "seconds": round(base_s, 3),
                                "runs_per_s": round(base_n / base_s, 1)},
        "subprocess_isolated_mode_baseline": {"programs": base_n, "seconds": round(bare_s, 3),
                                              "runs_per_s": round(base_n / bare_s, 1)},
        "speedup_vs_subprocess": round((args.samples / sandbox_s) / (base_n / base_s), 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
