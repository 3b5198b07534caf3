"""``cgpo demo``: a self-contained multi-task world where RM-only RLHF hacks the reward and CGPO does not.

    cgpo demo --out runs/demo            # ~5 min on 2 cores: world, SFT, RMs, 4 runs x 3 seeds, report
    cgpo demo --out /tmp/demo --quick    # the whole pipeline at toy size, in well under a minute

See cgpo/demo/world.py for the world, pipeline.py for the runs and report.py for the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from cgpo.demo.pipeline import Budget, build_world, run_all
from cgpo.demo.report import aggregate, claims, curves, hacking_examples, monitor_summary, table, write_report


def run_demo(out: Path, *, quick: bool = False, jobs: int | None = None, seeds: tuple[int, ...] | None = None,
             steps: int | None = None, log: Any = print) -> dict[str, Any]:
    """Build (or reuse) the world, run the comparison, write results.json, curves.png and report.md."""
    budget = Budget.quick() if quick else Budget()
    if seeds is not None:
        budget = dataclasses.replace(budget, seeds=tuple(seeds))
    if steps is not None:
        budget = dataclasses.replace(budget, steps=steps, eval_every=min(budget.eval_every, steps))
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    world = build_world(out / "world", budget, log=log)
    world_s = time.monotonic() - started
    runs = run_all(out, budget, jobs, log=log)
    total_s = time.monotonic() - started
    results: dict[str, Any] = {"seeds": list(budget.seeds), "runs": aggregate(runs, list(budget.seeds)),
                               "monitor": monitor_summary(runs), "budget": dataclasses.asdict(budget), "world": world,
                               "monitor_warnings": {f"{r['kind']}-{r['seed']}": r["warnings"] for r in runs
                                                    if r["warnings"]}}
    checked = claims(results)
    results["claims"] = checked
    peak_mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    results["timing"] = {"total_s": round(total_s, 1), "world_s": round(world_s, 1),
                         "runs_s": round(total_s - world_s, 1), "jobs": jobs, "peak_process_rss_mib": round(peak_mib),
                         "per_run_s": {f"{r['kind']}-{r['seed']}": r["seconds"] for r in runs if r["kind"] != "sft"}}
    hacked = next((c["tasks"] for c in checked if c["claim"].startswith("the baseline hacks")), [])
    examples = {task: hacking_examples(out, budget.seeds[0], task) for task in hacked[:2]}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    curves(runs, out / "curves.png")
    write_report(out, results, checked, examples)
    log("")
    log(table(results))
    log("")
    for c in checked:
        log(f"{'met' if c['held'] else 'NOT met'}: {c['claim']}")
    log(f"\nwrote {out / 'results.json'}, {out / 'curves.png'}, {out / 'report.md'} in {total_s:.0f} s")
    return results
