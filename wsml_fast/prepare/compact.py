"""Write the compact `observed.csv` straight from sparse triplets.

`wsml_fast.labels.write_label_csv` takes a dense matrix, which for OpenImages (millions of rows, thousands
of classes) would need hundreds of gigabytes; this writer produces the same file from the observed cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.labels import COMPACT
from wsml_fast.prepare.source import SparseLabels


def write_compact_csv(
    path: Path, images: Sequence[str], splits: Sequence[str], classes: Sequence[str], labels: SparseLabels
) -> None:
    """Write `image,split,positives,negatives` plus `classes.txt` next to it."""
    names = np.asarray(classes, dtype=object)
    frame = pd.DataFrame({"image": list(images), "split": list(splits)})
    for column, value in zip(COMPACT, (1.0, 0.0), strict=True):
        chosen = labels.values == value
        order = np.lexsort((labels.cols[chosen], labels.rows[chosen]))
        rows, cols = labels.rows[chosen][order], labels.cols[chosen][order]
        joined = pd.Series(names[cols]).groupby(rows).agg("|".join)
        frame[column] = joined.reindex(range(labels.n_rows), fill_value="").to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name("classes.txt").write_text("".join(f"{c}\n" for c in classes))
    frame.to_csv(path, index=False)
