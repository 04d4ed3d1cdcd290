"""What a report shows, read from a run folder: its settings, epochs, results and thresholds, and the run's data
when it can still be found (a run folder may have left its data behind: the page then says so and shows the rest).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from wsml_fast.core.errors import WsmlError, one_line
from wsml_fast.data.sources import data_home, from_folder, resolve_source
from wsml_fast.data.table import PartialLabelTable, load_table
from wsml_fast.training.config import TrainConfig
from wsml_fast.training.runfolder import METRICS, RESULTS, THRESHOLDS, RunFolder


@dataclass
class RunContents:
    """A run as the page sees it: `results` and `thresholds` once the run finished, `table` when its data is
    found (else `data_note` says why not)."""

    run: RunFolder
    config: TrainConfig
    status: str
    epochs: list[dict[str, float]]  # metrics.csv, one row per completed epoch
    results: dict | None
    thresholds: list[dict[str, str]] | None  # thresholds.csv rows
    table: PartialLabelTable | None
    data_note: str | None

    @property
    def classes(self) -> list[str] | None:
        """The run's classes, once it finished (its results name them)."""
        return self.results["classes"] if self.results else None


def read_run(path: Path, table: PartialLabelTable | None = None) -> RunContents:
    """The contents of the run at `path` (a run with a completed epoch, else one line); `table`: the run's data
    when the caller has it (training, at its end), else read again from where config.yaml says it is."""
    run = RunFolder.open(path)  # a run folder with trained weights: at least one completed epoch
    epochs = _metrics(run.file(METRICS))
    if not epochs:
        raise WsmlError(f"{run.file(METRICS)}: no completed epoch recorded; a report needs one")
    config = run.config()
    results = run.results() if run.file(RESULTS).is_file() else None
    thresholds = _csv_rows(run.file(THRESHOLDS)) if results and run.file(THRESHOLDS).is_file() else None
    note = None
    if table is None:
        table, note = _data(config)
    if table is not None and results and table.classes != results["classes"]:
        table, note = None, "the data's classes are not the run's any more (the data changed since the run)"
    status = (results or {}).get("status") or run.status().get("state", "unknown")
    return RunContents(run, config, status, epochs, results, thresholds, table, note)


def _data(config: TrainConfig) -> tuple[PartialLabelTable | None, str | None]:
    """The run's data with its training splits, or None and why it could not be read. A report only reads: a
    missing demo dataset is not made again."""
    try:
        if config.dataset:
            source = from_folder(data_home() / config.dataset, config.dataset)
        else:
            source = resolve_source(None, config.data, config.csv, config.images)
        return load_table(source, config.valid_fraction, config.seed), None
    except WsmlError as exc:
        return None, one_line(exc)


def _metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as numbers (an empty or unreadable cell: NaN)."""
    if not path.is_file():
        return []
    return [{name: _number(value) for name, value in row.items()} for row in _csv_rows(path)]


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
