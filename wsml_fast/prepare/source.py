"""What every format reader hands to the shared pipeline: rows, classes, labels and where images lie.

Dense label matrices serve datasets with full truth; a `LabelStore` (fill -1) serves sources such as
OpenImages whose millions of rows and thousands of classes would not fit a dense float matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsml_fast.data.labelstore import LabelStore

Labels = np.ndarray | LabelStore


def take_rows(labels: Labels, index: np.ndarray) -> Labels:
    """Rows `index` of a dense or sparse label table."""
    return labels.take(index) if isinstance(labels, LabelStore) else labels[index]


def stack_rows(parts: Sequence[Labels]) -> Labels:
    """Concatenate label tables of one kind row-wise, the order of `parts` kept."""
    if all(isinstance(p, LabelStore) for p in parts):
        return LabelStore.stack(parts)
    return np.concatenate(parts, axis=0)


def positives_per_row(labels: Labels) -> np.ndarray:
    """How many positive cells each row has."""
    if isinstance(labels, LabelStore):
        return labels.count(1, axis=1)
    return (labels == 1.0).sum(axis=1)


@dataclass
class Part:
    """One official split of a source: image paths relative to the output `images/` folder and labels."""

    images: list[str]
    truth: np.ndarray | None = None  # full 0/1 float32 matrix, when the dataset has one
    observed: Labels | None = None  # partial labels the source already provides (1, 0, -1)


@dataclass
class RawDataset:
    """A raw download as a format reader parsed it, before `wsml prepare` makes a dataset folder of it (which
    training then finds as `sources.DatasetFiles`). `parts` keys: `train` (official train), optionally `valid`,
    and `test`.

    `links` maps a first path component of the image column to the raw folder it stands for; the key
    "" means `images/` itself stands for that folder.
    """

    classes: list[str]
    links: dict[str, Path]
    parts: dict[str, Part]
    notes: list[str] = field(default_factory=list)
