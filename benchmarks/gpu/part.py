"""Run one part of the GPU checks: ``python -m benchmarks.gpu.part NAME --out DIR [--dry-run]``.

Writes ``DIR/NAME.json`` whatever happens (the part's figures, or the error that stopped it) and exits 0
unless the part could not even be imported, so run.sh goes on to the next part.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # after an installed cgpo: see run.sh
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from benchmarks.gpu.common import Context, environment, write  # noqa: E402

PARTS = ("rollouts", "trainer_step", "rm_service", "llm_judges", "nccl", "sharding")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=PARTS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: OUT/../work)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args(argv)
    ctx = Context(args.out, args.work or args.out.parent / "work", args.dry_run)
    tic = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.gpu.{args.name}")
        result = {"ok": True, **module.run(ctx)}
    except Exception as exc:  # noqa: BLE001 - written down; the next part runs
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["environment"] = environment()
    result["wall_s"] = round(time.perf_counter() - tic, 1)
    path = write(ctx, args.name, result)
    print(f"{args.name}: {'ok' if result['ok'] else result['error']} ({result['wall_s']} s) -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
