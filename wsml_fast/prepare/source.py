"""What every format reader hands to the shared pipeline: rows, classes, labels and where images lie.

Dense label matrices serve datasets with full truth; `SparseLabels` serves sources such as OpenImages
whose millions of rows and thousands of classes would not fit a dense float matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsml_fast.labels import UNOBSERVED


@dataclass
class SparseLabels:
    """Observed cells only, as (row, column, value) triplets; every other cell is unobserved."""

    n_rows: int
    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    values: np.ndarray  # float32, 1 or 0

    def take(self, index: np.ndarray) -> SparseLabels:
        """The rows `index` (in that order), renumbered from 0."""
        position = np.full(self.n_rows, -1, dtype=np.int64)
        position[index] = np.arange(len(index))
        new_rows = position[self.rows]
        keep = new_rows >= 0
        return SparseLabels(len(index), new_rows[keep], self.cols[keep], self.values[keep])

    def dense(self, n_cols: int) -> np.ndarray:
        """The float32 matrix with -1 for unobserved cells (for small tables and tests)."""
        matrix = np.full((self.n_rows, n_cols), UNOBSERVED, dtype=np.float32)
        matrix[self.rows, self.cols] = self.values
        return matrix


Labels = np.ndarray | SparseLabels


def take_rows(labels: Labels, index: np.ndarray) -> Labels:
    """Rows `index` of a dense or sparse label table."""
    return labels.take(index) if isinstance(labels, SparseLabels) else labels[index]


def stack_rows(parts: Sequence[Labels]) -> Labels:
    """Concatenate label tables of one kind row-wise, the order of `parts` kept."""
    if not all(isinstance(p, SparseLabels) for p in parts):
        return np.concatenate(parts, axis=0)
    offsets = np.cumsum([0] + [p.n_rows for p in parts])
    return SparseLabels(
        int(offsets[-1]),
        np.concatenate([p.rows + off for p, off in zip(parts, offsets, strict=False)]),
        np.concatenate([p.cols for p in parts]),
        np.concatenate([p.values for p in parts]),
    )


def positives_per_row(labels: Labels) -> np.ndarray:
    """How many positive cells each row has."""
    if isinstance(labels, SparseLabels):
        return np.bincount(labels.rows[labels.values == 1.0], minlength=labels.n_rows)
    return (labels == 1.0).sum(axis=1)


@dataclass
class Part:
    """One official split of a source: image paths relative to the output `images/` folder and labels."""

    images: list[str]
    truth: np.ndarray | None = None  # full 0/1 float32 matrix, when the dataset has one
    observed: Labels | None = None  # partial labels the source already provides (1, 0, -1)


@dataclass
class Source:
    """A parsed dataset. `parts` keys: `train` (official train), optionally `valid`, and `test`.

    `links` maps a first path component of the image column to the raw folder it stands for; the key
    "" means `images/` itself stands for that folder.
    """

    classes: list[str]
    links: dict[str, Path]
    parts: dict[str, Part]
    notes: list[str] = field(default_factory=list)
