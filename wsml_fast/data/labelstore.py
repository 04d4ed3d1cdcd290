"""Label matrices stored sparse: memory grows with the labels a dataset has, not with images x classes.

Partial labels are mostly absent: OpenImages has about 1.7 million training images, about 9,600 classes and a
handful of verified labels per image, so a dense matrix (65 GB as float32) is out of the question while its
listed entries take a few hundred MB. A `LabelStore` keeps only the entries that differ from its `fill`:

- observed labels: fill -1 (unlisted = unobserved); entries 1 (positive) and 0 (observed negative);
- a full truth: fill 0 (unlisted = negative); entries 1;
- derived targets (IUN's observed positives plus true negatives): fill 0, entries 1 and -1.

Entries are a sorted array of flat keys, row * n_classes + class (int64), and an int8 value each: 9 bytes an
entry. Sorted flat keys make a row a contiguous range (two binary searches), any entry a binary search, and the
same layout serves on the device, where `DeviceLabels` makes a batch's rows dense (B x C) and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

UNOBSERVED = -1


@dataclass(frozen=True)
class LabelStore:
    """An n_rows x n_classes label matrix: `values[i]` at flat key `keys[i]`, `fill` everywhere else."""

    n_rows: int
    n_classes: int
    keys: np.ndarray  # int64, sorted, unique
    values: np.ndarray  # int8
    fill: int = UNOBSERVED

    @classmethod
    def from_entries(
        cls, n_rows: int, n_classes: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, fill: int
    ) -> LabelStore:
        """From (row, class, value) entries in any order; an entry equal to `fill` is dropped. Two entries of one
        cell must agree (callers check their own files' clashes first, to name the line)."""
        keys = np.asarray(rows, dtype=np.int64) * n_classes + np.asarray(cols, dtype=np.int64)
        values = np.asarray(values, dtype=np.int8)
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        same = keys[1:] == keys[:-1]
        if (values[1:][same] != values[:-1][same]).any():
            raise ValueError("an entry is listed twice with different values")
        keep = np.concatenate([[True], ~same]) & (values != fill)
        return cls(n_rows, n_classes, keys[keep], values[keep], fill)

    @classmethod
    def empty(cls, n_rows: int, n_classes: int, fill: int = UNOBSERVED) -> LabelStore:
        return cls(n_rows, n_classes, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8), fill)

    @classmethod
    def from_dense(cls, matrix: np.ndarray, fill: int = UNOBSERVED) -> LabelStore:
        matrix = np.asarray(matrix)
        rows, cols = np.nonzero(matrix != fill)
        return cls.from_entries(*matrix.shape, rows, cols, matrix[rows, cols], fill)

    @classmethod
    def stack(cls, parts: Sequence[LabelStore]) -> LabelStore:
        """The rows of `parts` one after the other: a file read in chunks, or splits put back together."""
        first = parts[0]
        if any(p.n_classes != first.n_classes or p.fill != first.fill for p in parts):
            raise ValueError("stacked stores must have the same classes and fill")
        rows = np.cumsum([0] + [p.n_rows for p in parts], dtype=np.int64)
        keys = np.concatenate([p.keys + row * first.n_classes for p, row in zip(parts, rows[:-1], strict=True)])
        values = np.concatenate([p.values for p in parts])
        return cls(int(rows[-1]), first.n_classes, keys, values, first.fill)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_classes

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def rows_and_cols(self) -> tuple[np.ndarray, np.ndarray]:
        return np.divmod(self.keys, self.n_classes)

    def _row_ranges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        return (
            np.searchsorted(self.keys, rows * self.n_classes),
            np.searchsorted(self.keys, (rows + 1) * self.n_classes),
        )

    def take(self, rows: np.ndarray) -> LabelStore:
        """The rows `rows` (in that order), renumbered from 0."""
        rows = np.asarray(rows, dtype=np.int64)
        start, end = self._row_ranges(rows)
        lengths = end - start
        positions = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        new_rows = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        cols = self.keys[positions] % self.n_classes
        store = LabelStore(
            len(rows), self.n_classes, new_rows * self.n_classes + cols, self.values[positions], self.fill
        )
        return store if np.all(np.diff(rows) > 0) else store._sorted()

    def _sorted(self) -> LabelStore:
        order = np.argsort(self.keys, kind="stable")
        return LabelStore(self.n_rows, self.n_classes, self.keys[order], self.values[order], self.fill)

    def lookup(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The values at (rows[i], cols[i])."""
        keys = np.asarray(rows, dtype=np.int64) * self.n_classes + np.asarray(cols, dtype=np.int64)
        if not len(self.keys):
            return np.full(keys.shape, self.fill, dtype=np.int8)
        where = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[where] == keys, self.values[where], self.fill).astype(np.int8)

    def count(self, value: int, axis: int) -> np.ndarray:
        """How many entries equal `value` in each row (axis 1) or each class (axis 0)."""
        rows, cols = self.rows_and_cols()
        index, length = (cols, self.n_classes) if axis == 0 else (rows, self.n_rows)
        listed = np.bincount(index, minlength=length)
        counted = np.bincount(index[self.values == value], minlength=length)
        return counted + (self.n_rows if axis == 0 else self.n_classes) - listed if value == self.fill else counted

    def entries(self, value: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, classes) of the listed entries equal to `value` (not for `fill`)."""
        if value == self.fill:
            raise ValueError("the fill value is everywhere unlisted: ask for the listed values")
        return np.divmod(self.keys[self.values == value], self.n_classes)

    def to_dense(self) -> np.ndarray:
        """float32, the fill value in unlisted entries: for small tables and tests."""
        matrix = np.full(self.shape, self.fill, dtype=np.float32)
        matrix.reshape(-1)[self.keys] = self.values
        return matrix

    def digest(self) -> str:
        digest = hashlib.sha256(np.array([self.n_rows, self.n_classes, self.fill], dtype=np.int64).tobytes())
        digest.update(self.keys.tobytes())
        digest.update(self.values.tobytes())
        return digest.hexdigest()

    def to(self, device: torch.device) -> DeviceLabels:
        return DeviceLabels(self, device)


class DeviceLabels:
    """A store's entries on a device, to make the dense rows of a batch there (B x C float32)."""

    def __init__(self, store: LabelStore, device: torch.device) -> None:
        self.n_classes, self.fill, self.device = store.n_classes, store.fill, torch.device(device)
        self.keys = torch.from_numpy(store.keys).to(self.device)
        self.values = torch.from_numpy(store.values).to(self.device, torch.float32)

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        batch = torch.full((len(rows), self.n_classes), float(self.fill), device=self.device)
        owner, cols, positions = row_entries(self.keys, rows.to(self.device), self.n_classes)
        batch[owner, cols] = self.values[positions]
        return batch

    def lookup(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The values at (rows[i], cols[i]), as float32."""
        keys = rows.to(self.device, torch.int64) * self.n_classes + cols.to(self.device, torch.int64)
        if not len(self.keys):
            return torch.full(keys.shape, float(self.fill), device=self.device)
        where = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return torch.where(
            self.keys[where] == keys, self.values[where], torch.tensor(float(self.fill), device=self.device)
        )


def row_entries(keys: torch.Tensor, rows: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, ...]:
    """The entries of sorted flat `keys` that lie in `rows`: (position in `rows`, class, position in `keys`),
    found by two binary searches per row (one small host sync for their count)."""
    rows = rows.to(torch.int64)
    start = torch.searchsorted(keys, rows * n_classes)
    lengths = torch.searchsorted(keys, (rows + 1) * n_classes) - start
    total = int(lengths.sum())
    owner = torch.repeat_interleave(torch.arange(len(rows), device=keys.device), lengths, output_size=total)
    offsets = torch.arange(total, device=keys.device) - (torch.cumsum(lengths, 0) - lengths)[owner]
    positions = start[owner] + offsets
    return owner, keys[positions] % n_classes, positions
