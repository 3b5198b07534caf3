"""Merge the parts' JSON into ``results.json`` and ``report.md``:
``python -m benchmarks.gpu.report PARTS_DIR --out DIR``.

The report has the environment first, then one table per part from its ``summary`` rows (label,
value, unit), then every check that was skipped or failed, with its reason: a figure that is missing
says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PART_TITLES = {
    "rollouts": "1. Rollouts",
    "trainer_step": "2. Trainer step",
    "rm_service": "3. Reward-model service",
    "llm_judges": "4. LLM judges",
    "nccl": "5. NCCL code path (torchrun, one process)",
    "sharding": "6. Sharded training on one GPU (ddp, fsdp, LoRA, checkpointing)",
}


def load(parts_dir: Path) -> dict[str, dict[str, Any]]:
    """part name -> its result, in the order of ``PART_TITLES`` (unknown parts after)."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(parts_dir.glob("*.json"))}
    order = [name for name in PART_TITLES if name in found] + sorted(set(found) - set(PART_TITLES))
    return {name: found[name] for name in order}


def problems(result: Any, path: str = "") -> list[tuple[str, str]]:
    """Every ``error`` and ``skipped`` inside a part's result, with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(result, dict):
        for key in ("error", "skipped"):
            if isinstance(result.get(key), str):
                found.append((path or "(part)", f"{key}: {result[key]}"))
        for key, value in result.items():
            if key not in ("error", "skipped", "traceback", "environment"):
                found += problems(value, f"{path}/{key}" if path else key)
    return found


def environment_line(results: dict[str, dict[str, Any]]) -> str:
    env = next((r["environment"] for r in results.values() if isinstance(r.get("environment"), dict)), {})
    keys = ("gpu", "python", "torch", "cuda", "transformers", "vllm", "cpus")
    return ", ".join(f"{k} {env.get(k)}" for k in keys)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    dry = any(r.get("dry_run") for r in results.values())
    lines = ["# GPU checks" + (" (dry run: toy sizes on the CPU, no figure means anything)" if dry else ""), "",
             environment_line(results), ""]
    for name, result in results.items():
        lines += [f"## {PART_TITLES.get(name, name)}", ""]
        rows = result.get("summary") or []
        if rows:
            lines += ["| check | value | unit |", "|---|---:|---|"]
            lines += [f"| {label} | {_fmt(value)} | {unit} |" for label, value, unit in rows]
            lines.append("")
        for where, what in problems(result):
            lines.append(f"- {where}: {what}")
        for note in result.get("notes") or []:
            lines.append(f"- note: {note}")
        if "wall_s" in result:
            lines.append(f"- wall time {result['wall_s']} s")
        lines.append("")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("parts_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = load(args.parts_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
