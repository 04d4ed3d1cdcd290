"""The run log: metrics.csv rows and the epoch numbers fastai's progress table shows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from helpers import observed_labels, tiny_learner

from wsml_fast.training.callbacks import RunLogCallback
from wsml_fast.training.runfolder import RunFolder


def test_epochs_count_from_one_across_fits_in_the_csv_and_the_progress_table(tmp_path: Path) -> None:
    run_log = RunLogCallback(RunFolder(tmp_path).write_metrics, say=lambda *a, **k: None, print_lines=False)
    learn = tiny_learner([run_log], observed_labels())
    table_rows: list[list] = []
    learn.logger = lambda row: table_rows.append(list(row))  # what the progress table would print
    learn.fit(2, 0.1)
    learn.fit(1, 0.1)  # a second stage, as linear-init does

    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3]
    epochs = [row[0] for row in table_rows if isinstance(row[0], int)]  # skips the header row
    assert epochs == [1, 2, 3]
