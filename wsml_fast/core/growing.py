"""Columns that grow batch by batch, kept in blocks allocated once each.

A streaming pass (scoring a split, completing its labels) keeps a little of every batch among the batch's large
temporaries (B x C scores, logits, masks). Kept as small arrays, one per batch, those pieces pin glibc's heap: once
large blocks have been freed, glibc serves allocations of their size from the heap too, and a piece kept above a
batch's freed temporaries keeps their space from being reused whole, so resident memory grows with every batch
(about 2.5 MB a batch of 256 images x 9,600 classes, measured with benchmarks/complete_scale.py; flat with blocks).
Copied into blocks, the pieces cost one allocation per block: blocks of FIRST_BLOCK entries at first (a small pass
stays small), each twice the last, up to LARGEST_BLOCK.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIRST_BLOCK = 1 << 14
LARGEST_BLOCK = 1 << 21


class GrowingColumns:
    """Equal-length columns of the given dtypes, appended to piece by piece."""

    def __init__(self, dtypes: Sequence[np.dtype | type]) -> None:
        self.dtypes = [np.dtype(d) for d in dtypes]
        self.blocks: list[list[np.ndarray]] = []
        self.filled = 0  # entries used in the last block

    def __len__(self) -> int:
        return sum(len(block[0]) for block in self.blocks[:-1]) + self.filled

    def add(self, *pieces: np.ndarray) -> None:
        """Append one piece to each column (pieces of equal length, cast to the column's dtype)."""
        length, done = len(pieces[0]), 0
        while done < length:
            if not self.blocks or self.filled == len(self.blocks[-1][0]):
                size = min(LARGEST_BLOCK, 2 * len(self.blocks[-1][0])) if self.blocks else FIRST_BLOCK
                self.blocks.append([np.empty(size, dtype) for dtype in self.dtypes])
                self.filled = 0
            take = min(length - done, len(self.blocks[-1][0]) - self.filled)
            for block, piece in zip(self.blocks[-1], pieces, strict=True):
                block[self.filled : self.filled + take] = piece[done : done + take]
            self.filled += take
            done += take

    def arrays(self) -> list[np.ndarray]:
        """Each column whole, as one array."""
        if not self.blocks:
            return [np.zeros(0, dtype) for dtype in self.dtypes]
        parts = [*self.blocks[:-1], [column[: self.filled] for column in self.blocks[-1]]]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.dtypes))]
