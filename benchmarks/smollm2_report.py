"""The SmolLM2-on-IFEval results as markdown: IFEval's four accuracies before and after training per seed,
the per-step judge pass rate and KL of each run, and its wall time (benchmarks/smollm2_ifeval.sh).

    python benchmarks/smollm2_report.py runs/smollm2 --runs smollm2-ifeval-s0 smollm2-ifeval-s1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TASK = "instructions"
ACCURACIES = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")


def ifeval(path: Path) -> dict[str, float]:
    metrics = json.loads(path.read_text())
    return {name: metrics[f"eval/{TASK}/ifeval/{name}"] for name in ACCURACIES} | {
        "calibrated_reward": metrics[f"eval/{TASK}/calibrated_reward"]}


def _flips(before: Path, after: Path) -> tuple[int, int]:
    """Prompts that pass (strict) after but not before, and the reverse: the paired view of the gain."""
    def feasible(path: Path) -> dict[str, bool]:
        return {row["id"]: row["feasible"] for row in map(json.loads, path.read_text().splitlines())}

    a, b = feasible(before), feasible(after)
    return sum(b[k] and not a[k] for k in a), sum(a[k] and not b[k] for k in a)


def steps(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def report(out: Path, runs: list[str]) -> str:
    before = ifeval(out / "initial" / "ifeval.json")
    after = {name: ifeval(out / name / "ifeval.json") for name in runs}
    lines = ["| IFEval (541 prompts, greedy) | before | " + " | ".join(f"after, {n}" for n in runs)
             + " | mean gain | spread across seeds |", "|---|---|" + "---|" * len(runs) + "---|---|"]
    for name in ACCURACIES:
        values = [after[r][name] for r in runs]
        spread = max(values) - min(values)
        gain = statistics.mean(values) - before[name]
        lines.append(f"| {name.replace('_', ' ')} | {100 * before[name]:.2f} | "
                     + " | ".join(f"{100 * v:.2f}" for v in values)
                     + f" | {100 * gain:+.2f} | {100 * spread:.2f} |")
    flips = {r: _flips(out / "initial" / "eval_samples" / "initial.jsonl",
                       out / r / "eval_samples" / "checkpoint.jsonl") for r in runs}
    lines.append("| prompts newly passing / newly failing (strict) | | "
                 + " | ".join(f"{up} / {down}" for up, down in flips.values()) + " | | |")
    lines.append("| calibrated reward vs GPT-4 | " + f"{before['calibrated_reward']:.3f} | "
                 + " | ".join(f"{after[r]['calibrated_reward']:.3f}" for r in runs) + " | | |")

    records = {r: steps(out / r) for r in runs}
    # the training steps (a run's step-0 row, if any, is the initial policy's held-out evaluation)
    training = {r: [row for row in rows if row["step"] > 0] for r, rows in records.items()}
    lines += ["", "| step | " + " | ".join(f"pass rate {r} | KL {r}" for r in runs) + " |",
              "|---|" + "---|---|" * len(runs)]
    for i in range(max(len(v) for v in training.values())):
        cells = []
        for r in runs:
            row = training[r][i] if i < len(training[r]) else {}
            cells += [f"{row.get(f'{TASK}/feasible_rate', float('nan')):.3f}",
                      f"{row.get(f'{TASK}/kl', float('nan')):+.2f}"]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")

    lines += ["", "| run | wall time (train command) | of which steps | s/step | held-out pass rate at the end "
              "(48 generated prompts, greedy) | KL(π_w ‖ π_ref) estimate there (nats/response, ± standard error; "
              "samples at the training temperature) |", "|---|---|---|---|---|---|"]
    for r in runs:
        wall = float((out / r / "wall_s").read_text())
        in_steps = sum(row[f"time/{part}_s"] for row in training[r] for part in ("generate", "score", "update"))
        held_out = records[r][-1].get(f"eval/{TASK}/pass_rate", float("nan"))
        kl = records[r][-1].get(f"eval/{TASK}/kl", float("nan"))
        stderr = records[r][-1].get(f"eval/{TASK}/kl_stderr", float("nan"))
        lines.append(f"| {r} | {wall / 60:.1f} min | {in_steps / 60:.1f} min | {in_steps / len(training[r]):.0f} | "
                     f"{held_out:.3f} | {kl:.2f} ± {stderr:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", nargs="+", required=True)
    args = parser.parse_args()
    print(report(args.out, args.runs))


if __name__ == "__main__":
    main()
