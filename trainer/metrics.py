"""The run's metrics: ``output_dir/metrics.jsonl`` (one JSON row per step) and TensorBoard, written by
rank 0, and trimmed on resume to the checkpoint's step — rows a run wrote after its last checkpoint are
run again by the resumed run, so they are dropped rather than duplicated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_record(record: dict[str, float], metrics_file: Any, board: Any) -> None:
    """One row of ``metrics.jsonl`` (rank 0) and its TensorBoard scalars at the row's step."""
    if metrics_file is not None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    if board is not None:
        for key, value in record.items():
            board.add_scalar(key, value, int(record["step"]))


def read_metrics(path: Path, until: int) -> list[dict[str, float]]:
    """The rows of ``metrics.jsonl`` up to step ``until`` (none if the file does not exist)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= until]


def keep_metrics_until(path: Path, until: int) -> list[dict[str, float]]:
    """Rewrite ``metrics.jsonl`` (atomically) without the rows past step ``until``: those of a run that
    stopped after its last checkpoint, which the resumed run writes again. Returns the rows kept."""
    rows = read_metrics(path, until)
    if path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(path)
    return rows


def open_tensorboard(out: Path, purge_step: int) -> Any:
    """A TensorBoard writer under ``out/tensorboard`` that drops the events from ``purge_step`` on."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl has everything
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)


def progress_bar(start: int, total: int) -> Any:
    """A tqdm bar of the steps when stderr is a terminal (else None)."""
    import sys

    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


class MetricsSink:
    """Where a run's records go: ``metrics.jsonl``, TensorBoard and a progress bar on rank 0, nothing on the
    other ranks. Opening it trims the rows a crashed run wrote past ``start`` (all of them when starting
    over) and keeps the earlier ones in ``earlier``, which every rank reads."""

    def __init__(self, out: Path, start: int, main: bool, total_steps: int) -> None:
        path, kept = out / "metrics.jsonl", start if start else -1
        self.earlier = keep_metrics_until(path, kept) if main else read_metrics(path, kept)
        self._board = open_tensorboard(out, purge_step=start + 1 if start else 0) if main else None
        self._bar = progress_bar(start, total_steps) if main else None
        self._file = path.open("a") if main else None

    def write(self, record: dict[str, float], advance: bool = True) -> None:
        """One record; ``advance`` moves the progress bar a step (not for the step-0 evaluation)."""
        write_record(record, self._file, self._board)
        if advance and self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        for closable in (self._file, self._board, self._bar):
            if closable is not None:
                closable.close()
