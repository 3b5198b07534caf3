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


TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
"""``report_to`` choices; ``metrics.jsonl`` is always written."""
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


class Tracker:
    """One experiment tracker: the run's config once, then each record at its step."""

    def __init__(self, name: str, out: Path, config: dict[str, Any], start: int) -> None:
        import importlib

        self.name = name
        run = out.name
        if name == "tensorboard":
            self._board = open_tensorboard(out, purge_step=start + 1 if start else 0)
            if self._board is not None:
                self._board.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
            return
        self._module = importlib.import_module(TRACKER_MODULES[name])
        if name in ("wandb", "trackio"):  # the same API: init(project, name, config), log(dict, step), finish()
            where = {"dir": str(out), "resume": "allow", "id": run} if name == "wandb" else {}
            self._module.init(project="cgpo", name=run, config=config, **where)
        else:
            self._module.start_run(run_name=run)
            self._module.log_params(dict(_flat(config)))

    def log(self, record: dict[str, float]) -> None:
        step = int(record["step"])
        values = {k: v for k, v in record.items() if k != "step"}
        if self.name == "tensorboard":
            write_record(record, None, self._board)
        elif self.name in ("wandb", "trackio"):
            self._module.log(values, step=step)
        else:
            self._module.log_metrics(values, step=step)

    def table(self, kind: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample rows as the tracker shows tables: TensorBoard text, a wandb / trackio ``Table``, an mlflow
        table artifact."""
        if not rows:
            return
        columns = list(rows[0])
        cells = [[_cell(row.get(c)) for c in columns] for row in rows]
        if self.name == "tensorboard":
            if self._board is not None:
                self._board.add_text(f"samples/{kind}", _markdown(columns, cells), step)
        elif self.name in ("wandb", "trackio"):
            self._module.log({f"samples/{kind}": self._module.Table(columns=columns, data=cells)}, step=step)
        else:
            self._module.log_table(data={c: [row[i] for row in cells] for i, c in enumerate(columns)},
                                   artifact_file=f"samples/{kind}-step-{step}.json")

    def close(self) -> None:
        if self.name == "tensorboard":
            if self._board is not None:
                self._board.close()
        elif self.name in ("wandb", "trackio"):
            self._module.finish()
        else:
            self._module.end_run()


def _cell(value: Any) -> Any:
    """A table cell: numbers, booleans and text as they are, anything else as JSON text."""
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value)


def _markdown(columns: list[str], cells: list[list[Any]]) -> str:
    def text(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(text(v) for v in row) + " |" for row in cells])


def _flat(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested config as dotted keys (what mlflow's parameters are)."""
    if isinstance(config, dict):
        return [item for k, v in config.items() for item in _flat(v, f"{prefix}{k}.")]
    if isinstance(config, list):
        return [item for i, v in enumerate(config) for item in _flat(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), config)]


class MetricsSink:
    """Where a run's records go: ``metrics.jsonl``, the ``report_to`` trackers (TensorBoard by default) and
    a progress bar on rank 0, nothing on the other ranks. Opening it trims the rows a crashed run wrote
    past ``start`` (all of them when starting over) and keeps the earlier ones in ``earlier``, which every
    rank reads."""

    def __init__(self, out: Path, start: int, main: bool, total_steps: int,
                 report_to: tuple[str, ...] = ("tensorboard",), config: dict[str, Any] | None = None) -> None:
        path, kept = out / "metrics.jsonl", start if start else -1
        self.earlier = keep_metrics_until(path, kept) if main else read_metrics(path, kept)
        self._trackers = [Tracker(name, out, config or {}, start) for name in report_to] if main else []
        self._bar = progress_bar(start, total_steps) if main else None
        self._file = path.open("a") if main else None

    def write(self, record: dict[str, float], advance: bool = True) -> None:
        """One record; ``advance`` moves the progress bar a step (not for the step-0 evaluation)."""
        write_record(record, self._file, None)
        for tracker in self._trackers:
            tracker.log(record)
        if advance and self._bar is not None:
            self._bar.update(1)

    def samples(self, kind: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample rows (``train`` rollouts or ``eval`` responses, with each judge's detail) to the trackers."""
        for tracker in self._trackers:
            tracker.table(kind, step, rows)

    def close(self) -> None:
        for closable in (self._file, *self._trackers, self._bar):
            if closable is not None:
                closable.close()
