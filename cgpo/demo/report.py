"""The demo's outputs: ``results.json``, ``curves.png``, ``report.md`` and the printed table.

Every figure is a held-out evaluation (one sample per prompt) scored by the judges and by the
helpfulness RM (the reward the baseline maximises), averaged over seeds. The claims of the paper the
demo checks are evaluated from these numbers and reported as they come out, met or not.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from cgpo.demo.world import JUDGES, TASKS
from cgpo.trainer.config import MonitorConfig

KINDS = ("sft", "baseline", "crpg", "codpo", "crraft")
LABELS = {"sft": "SFT start", "baseline": "baseline (RM only)", "crpg": "CGPO-CRPG", "codpo": "CGPO-CODPO",
          "crraft": "CGPO-CRRAFT"}
METRICS = ("pass_rate", "reward", "calibrated_reward", "kl")


def aggregate(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """results.json's ``runs``: per kind and task, the final metrics' mean over seeds (and pass-rate std)."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        finals = [r["final"] for r in runs if r["kind"] == kind]
        if not finals:
            continue
        tasks = {}
        for task in TASKS:  # the SFT start is π_ref: it has no KL estimate
            values = {m: [f[f"eval/{task}/{m}"] for f in finals if f"eval/{task}/{m}" in f] for m in METRICS}
            tasks[task] = {m: statistics.fmean(v) for m, v in values.items() if v}
            tasks[task]["pass_rate_std"] = statistics.pstdev(values["pass_rate"]) if len(finals) > 1 else 0.0
            tasks[task]["per_seed_pass_rate"] = values["pass_rate"]
        out[kind] = {"tasks": tasks}
    return out


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's acceptance claims (docs/method.md §6's PPO-vs-CGPO result), each with whether it held."""
    runs = results["runs"]
    sft, base = runs["sft"]["tasks"], runs["baseline"]["tasks"]
    hacked = [t for t in TASKS if base[t]["reward"] > sft[t]["reward"]
              and base[t]["pass_rate"] <= sft[t]["pass_rate"] - 0.10]
    out = [{"claim": "the baseline hacks: its RM reward rises while its pass rate falls by >= 10 points on a task",
            "held": bool(hacked), "tasks": hacked}]
    for kind in ("crpg", "crraft"):
        cg = runs[kind]["tasks"]
        raised = [t for t in TASKS if cg[t]["pass_rate"] > sft[t]["pass_rate"]]
        worst = min(cg[t]["pass_rate"] - sft[t]["pass_rate"] for t in TASKS)
        ahead = {t: cg[t]["pass_rate"] - base[t]["pass_rate"] for t in hacked}
        out.append({"claim": f"{kind} raises the pass rate above the SFT start on >= 3 tasks", "held": len(raised) >= 3,
                    "tasks": raised})
        out.append({"claim": f"{kind} lowers no task's pass rate by more than 2 points", "held": worst >= -0.02,
                    "worst_change": worst})
        out.append({"claim": f"{kind} ends >= 15 points above the baseline on the hacked tasks",
                    "held": bool(ahead) and min(ahead.values()) >= 0.15, "margins": ahead})
    monitor = results.get("monitor")
    if monitor is not None:
        missed = [f"{t} (seed {s})" for t in hacked for s, seen in monitor["baseline"][t].items() if not seen["fired"]]
        out.append({"claim": "the reward-hacking monitor flags the baseline on every hacked task, in every seed",
                    "held": bool(hacked) and not missed, "missed": missed})
        noisy = [f"{kind} {t} (seed {s})" for kind in ("crpg", "crraft") for t in TASKS
                 for s, seen in monitor[kind][t].items() if seen["fired"]]
        out.append({"claim": "the reward-hacking monitor stays quiet on crpg and crraft (every task and seed)",
                    "held": not noisy, "fired": noisy})
    return out


def monitor_summary(runs: list[dict[str, Any]], config: MonitorConfig | None = None) -> dict[str, Any]:
    """Per run kind, task and seed: whether the monitor fired (first crossing: step, data, judge, window,
    score) and the highest training-window and held-out scores (trainer/monitor.py)."""
    if config is None:
        config = MonitorConfig()
    out: dict[str, Any] = {}
    for r in runs:
        if not r["records"]:
            continue
        for task in TASKS:
            seen: dict[str, Any] = {"fired": None, "max_train": None, "max_eval": None}
            eval_steps: list[int] = []
            for rec in r["records"]:
                step = int(rec["step"])
                if f"eval/{task}/pass_rate" in rec:
                    eval_steps.append(step)
                for source, prefix in (("train", ""), ("eval", "eval/")):
                    score = rec.get(f"{prefix}{task}/hacking_score")
                    if score is None:
                        continue
                    key = f"max_{source}"
                    seen[key] = score if seen[key] is None else max(seen[key], score)
                    if score >= config.threshold and seen["fired"] is None:
                        judge = max(JUDGES[task], key=lambda j: rec.get(f"{prefix}{task}/judge/{j}/hacking_score",
                                                                         float("-inf")))
                        first = (step - config.window + 1 if source == "train"
                                 else eval_steps[max(0, len(eval_steps) - config.eval_window)])
                        seen["fired"] = {"step": step, "source": source, "judge": judge, "window": [first, step],
                                         "score": score}
            out.setdefault(r["kind"], {}).setdefault(task, {})[r["seed"]] = seen
    return out


def monitor_lines(summary: dict[str, Any]) -> list[str]:
    """report.md's monitor section: one line per run and task."""
    lines = []
    for kind in KINDS:
        for task in TASKS:
            for seed, seen in sorted(summary.get(kind, {}).get(task, {}).items()):
                peak = ", ".join(f"{what} {seen[f'max_{key}']:+.2f}" for key, what in
                                 (("train", "highest training-window score"), ("eval", "held-out"))
                                 if seen[f"max_{key}"] is not None) or "no score (the run is shorter than a window)"
                fired = seen["fired"]
                if fired is None:
                    lines.append(f"- {LABELS[kind]}, seed {seed}, {task}: quiet ({peak})")
                    continue
                where = "training batches" if fired["source"] == "train" else "held-out evaluations"
                lines.append(f"- {LABELS[kind]}, seed {seed}, {task}: **fired** at step {fired['step']} "
                             f"(judge {fired['judge']}, {where} of steps {fired['window'][0]}-{fired['window'][1]}, "
                             f"score {fired['score']:.2f}; {peak})")
    return lines


def table(results: dict[str, Any]) -> str:
    """Markdown: per task, pass rate (± std over seeds) and helpfulness-RM reward of every run."""
    runs = results["runs"]
    kinds = [k for k in KINDS if k in runs]
    head = "| task | " + " | ".join(LABELS[k] for k in kinds) + " |"
    lines = [head, "|---" * (len(kinds) + 1) + "|"]
    for task in TASKS:
        cells = [f"{100 * runs[k]['tasks'][task]['pass_rate']:.0f} ± "
                 f"{100 * runs[k]['tasks'][task]['pass_rate_std']:.0f}"
                 for k in kinds]
        lines.append(f"| {task}: pass % | " + " | ".join(cells) + " |")
    for task in TASKS:
        cells = [f"{runs[k]['tasks'][task]['reward']:+.2f}" for k in kinds]
        lines.append(f"| {task}: RM reward | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Per task: judge pass rate and helpfulness-RM reward against step, mean over seeds, every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(TASKS), figsize=(4 * len(TASKS), 6.5), sharex=True)
    for kind in KINDS[1:]:
        mine = [r for r in runs if r["kind"] == kind]
        if not mine:
            continue
        # every run's evaluations, the SFT start's (step 0) first
        evals = [[rec for rec in r["records"] if f"eval/{TASKS[0]}/pass_rate" in rec] for r in mine]
        steps = [int(rec["step"]) for rec in evals[0]]
        for col, task in enumerate(TASKS):
            for row, metric in enumerate(("pass_rate", "reward")):
                series = [statistics.fmean(e[i][f"eval/{task}/{metric}"] for e in evals) for i in range(len(steps))]
                axes[row][col].plot(steps, series, marker="o", label=LABELS[kind])
    for col, task in enumerate(TASKS):
        axes[0][col].set_title(task)
        axes[0][col].set_ylim(-0.02, 1.02)
        axes[1][col].set_xlabel("step")
    axes[0][0].set_ylabel("judge pass rate (held out)")
    axes[1][0].set_ylabel("helpfulness RM reward (held out)")
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hacking_examples(out: Path, seed: int, task: str, n: int = 3) -> list[dict[str, Any]]:
    """Held-out prompts where the baseline's final answer fails the judge yet outscores CRPG's passing one."""
    def final_samples(kind: str) -> dict[str, dict[str, Any]]:
        files = sorted((out / "runs" / f"{kind}-{seed}" / "eval_samples").glob("step-*.jsonl"),
                       key=lambda p: int(p.stem.split("-")[1]))
        if not files:
            return {}
        rows = [json.loads(line) for line in files[-1].read_text().splitlines()]
        return {r["id"]: r for r in rows if r["task"] == task}

    base, cgpo = final_samples("baseline"), final_samples("crpg")
    found = [{"prompt": b["prompt"], "baseline": b["response"], "baseline_reward": b["reward"],
              "crpg": cgpo[i]["response"], "crpg_reward": cgpo[i]["reward"]}
             for i, b in base.items() if i in cgpo and not b["feasible"] and cgpo[i]["feasible"]
             and b["reward"] > cgpo[i]["reward"]]
    return found[:n]


def write_report(out: Path, results: dict[str, Any], checked: list[dict[str, Any]],
                 examples: dict[str, list[dict[str, Any]]]) -> None:
    budget = results["budget"]
    lines = [
        "# CGPO demo: RM-only RLHF hacks the reward, CGPO's judges prevent it",
        "",
        f"Held-out prompts ({budget['n_eval']} per task), one sample each; mean over seeds {results['seeds']} "
        f"(± population std of the pass rate). Every run starts from the same SFT policy and has the same "
        f"budget: {budget['steps']} steps, {budget['batch_size']} prompts × K = {budget['k']} samples per task "
        f"per step, learning rate {budget['lr']}. RM reward: the helpfulness RM on every task — the reward the "
        "baseline maximises, with its built-in flaw (it prefers confident, verbose and compliant answers).",
        "",
        table(results),
        "",
        "![curves](curves.png)",
        "",
        "## Claims",
        "",
    ]
    lines += [f"- {'met' if c['held'] else 'NOT met'}: {c['claim']}"
              + (f" ({', '.join(c['tasks'])})" if c.get("tasks") else "")
              + (f" (missed: {', '.join(c['missed'])})" if c.get("missed") else "")
              + (f" (fired: {', '.join(c['fired'])})" if c.get("fired") else "") for c in checked]
    if results.get("monitor") is not None:
        monitor = MonitorConfig()
        lines += ["", "## Reward-hacking monitor", "",
                  f"`TASK/hacking_score` = min(trend of the calibrated reward, −trend of the judge's pass rate), "
                  f"trends being Pearson correlations with the step over the last {monitor.window} training steps, "
                  f"or over the last {monitor.eval_window} held-out evaluations (the SFT start's included); it fires "
                  f"at {monitor.threshold} (trainer/monitor.py). One line per run and task:", ""]
        lines += monitor_lines(results["monitor"])
    for task, rows in examples.items():
        lines += ["", f"## Where the baseline hacks the RM: {task}", ""]
        for row in rows:
            lines += [f"**Prompt:** {row['prompt']}", "",
                      f"- baseline (fails the judge, RM reward {row['baseline_reward']:+.2f}): {row['baseline']}",
                      f"- CGPO-CRPG (passes, RM reward {row['crpg_reward']:+.2f}): {row['crpg']}", ""]
    lines += ["", f"Wall time {results['timing']['total_s']:.0f} s (world {results['timing']['world_s']:.0f} s, "
              f"runs {results['timing']['runs_s']:.0f} s) with {results['timing']['jobs']} parallel jobs."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
