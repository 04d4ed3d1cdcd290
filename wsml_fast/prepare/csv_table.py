"""A user's own fully labelled table, to simulate partial labels on it.

Layout: ROOT is the CSV file (or a folder holding labels.csv): column `image` (path relative to the image
root, default the CSV's folder), optional `split` (train, valid or test), then one 0/1 column per class.
Rows without a split column are all official train. `train` rows are divided 80/20 into train/valid
unless the table has `valid` rows of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import SPLITS, outside_root_note, read_label_csv
from wsml_fast.prepare.source import Part, RawDataset


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Read the table as complete truth and group its rows by split."""
    path = root / "labels.csv" if root.is_dir() else root
    if not path.is_file():
        raise WsmlError(
            f"{path}: not found; expected a CSV file (or a folder holding labels.csv) "
            "with columns image,[split,]class..."
        )
    table = read_label_csv(path, complete=True)
    splits = table.splits if table.splits is not None else np.full(len(table.images), "train", dtype=object)
    truth = table.store.to_dense()  # partial labels are simulated on the full matrix
    parts = {
        split: Part([table.images[i] for i in index], truth=truth[index])
        for split in SPLITS
        if (index := np.flatnonzero(splits == split)).size
    }
    root = image_root or path.parent
    outside = outside_root_note(table.images, root)
    return RawDataset(table.classes, {"": root}, parts, notes=[outside] if outside else [])
