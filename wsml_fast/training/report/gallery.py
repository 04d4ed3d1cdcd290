"""The gallery: training images with the labels a scheme added to them (LL-Cp's stored positives, EM-APL's soft
negatives), each marked right or wrong where the truth is known.

The images are a sample drawn by a hash of their names, the same for every report of a run, in one pass over the
added-labels file with a bounded memory (the file can hold tens of millions of rows); thumbnails are small
inline JPEGs.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.loaders import load_rgb
from wsml_fast.data.table import PartialLabelTable
from wsml_fast.schemes.em import PSEUDO_LABELS
from wsml_fast.schemes.large_loss import CORRECTIONS
from wsml_fast.training.runfolder import RunFolder

GALLERY_IMAGES = 48
THUMBNAIL = 64  # pixels, the longer side
CHUNK_ROWS = 1_000_000  # rows of the added-labels file read at a time


@dataclass(frozen=True)
class AddedKind:
    """A file of labels a scheme adds: what they are, and the true value that makes one right."""

    file: str
    what: str
    right_when: int


ADDED_KINDS = (AddedKind(CORRECTIONS, "positive", 1), AddedKind(PSEUDO_LABELS, "soft negative", 0))


@dataclass(frozen=True)
class AddedLabel:
    name: str  # the class
    epoch: int
    value: float | None  # a soft label's value (None: a hard label)
    right: bool | None  # None: no truth


@dataclass
class Tile:
    image: str
    thumbnail: str | None  # a data: URI (None: the image could not be read)
    observed: list[str]  # its observed positives
    added: list[AddedLabel]  # wrong ones first, then by epoch


@dataclass
class Gallery:
    kind: AddedKind
    total: int  # labels in the file
    tiles: list[Tile]
    note: str | None  # why the thumbnails or the marks are missing


def added_kind(run: RunFolder) -> AddedKind | None:
    """The kind of labels the run's scheme added, when it adds any."""
    return next((kind for kind in ADDED_KINDS if run.file(kind.file).is_file()), None)


def build_gallery(run: RunFolder, table: PartialLabelTable | None, data_note: str | None) -> Gallery | None:
    """The gallery of a run whose scheme adds labels (else None); without the data, the labels alone (no
    thumbnails, no marks), and `data_note` says why."""
    kind = added_kind(run)
    if kind is None:
        return None
    rows, total = sample_rows(run.file(kind.file))
    groups = list(rows.groupby("image", sort=False))  # images in order of their first added label
    if table is None:
        return Gallery(kind, total, [_tile(kind, added) for _, added in groups], data_note)
    found = pd.Index(table.images).get_indexer([image for image, _ in groups])
    class_index = {name: c for c, name in enumerate(table.classes)}
    tiles = []
    for (image, added), row in zip(groups, found, strict=True):
        if row < 0:  # not in the data any more
            tiles.append(_tile(kind, added))
            continue
        truth = None
        if table.truth is not None:
            cols = np.array([class_index.get(name, -1) for name in added["class"]], dtype=np.int64)
            truth = np.where(cols >= 0, table.truth.lookup(np.full(len(cols), row), np.maximum(cols, 0)), -1)
        observed = [table.classes[c] for c in table.observed.take(np.array([row])).entries(1)[1]]
        tiles.append(_tile(kind, added, truth, _thumbnail(table.source.images_root / image), observed))
    note = None if table.truth is not None else "no truth.csv: whether each added label is right is not known"
    return Gallery(kind, total, tiles, note)


def sample_rows(path: Path, images: int = GALLERY_IMAGES) -> tuple[pd.DataFrame, int]:
    """The rows of `images` images drawn from an added-labels file (those whose names hash lowest: a uniform
    sample, the same each time), and the file's row count. One pass in chunks: an image whose hash is among the
    lowest at the end was among the lowest from its first row on, so none of its rows is missed."""
    kept, total = None, 0
    chunks = pd.read_csv(path, chunksize=CHUNK_ROWS, dtype={"image": str, "class": str}, keep_default_na=False)
    for chunk in chunks:
        total += len(chunk)
        chunk = chunk.assign(key=pd.util.hash_array(chunk["image"].to_numpy(dtype=object)))
        both = chunk if kept is None else pd.concat([kept, chunk], ignore_index=True)
        lowest = np.unique(both["key"].to_numpy())[:images]
        kept = both[both["key"] <= lowest[-1]] if len(lowest) else both
    return kept.sort_values(["epoch", "image"], kind="stable"), total


def _tile(
    kind: AddedKind,
    added: pd.DataFrame,
    truth: np.ndarray | None = None,
    thumbnail: str | None = None,
    observed: list[str] | None = None,
) -> Tile:
    """One image's tile; `truth`: the true value of each added label (-1: its class is unknown to the data)."""
    values = added["value"].tolist() if "value" in added else [None] * len(added)
    marks = [None] * len(added) if truth is None else [None if t < 0 else bool(t == kind.right_when) for t in truth]
    labels = [
        AddedLabel(name, int(epoch), value, right)
        for name, epoch, value, right in zip(added["class"], added["epoch"], values, marks, strict=True)
    ]
    labels.sort(key=lambda label: (label.right is not False, label.epoch, label.name))
    return Tile(str(added["image"].iloc[0]), thumbnail, observed or [], labels)


def _thumbnail(path: Path, size: int = THUMBNAIL) -> str | None:
    """A small JPEG of the image as a data: URI, or None when it cannot be read."""
    from PIL import Image

    try:
        picture = Image.fromarray(load_rgb(path, min_size=size))
    except WsmlError:
        return None
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
