"""Columns kept in blocks read back as the pieces put in, across the blocks' boundaries."""

from __future__ import annotations

import numpy as np

from wsml_fast.core.growing import FIRST_BLOCK, GrowingColumns


def test_pieces_read_back_whole_in_order_and_cast_to_their_columns() -> None:
    rng = np.random.default_rng(0)
    columns = GrowingColumns([np.int64, np.float32])
    assert [len(a) for a in columns.arrays()] == [0, 0] and len(columns) == 0
    lengths = [0, 5, FIRST_BLOCK - 5, 1, 3 * FIRST_BLOCK, 7]  # exactly a block, then across several
    keys = [rng.integers(0, 10**12, n) for n in lengths]
    scores = [rng.random(n) for n in lengths]  # float64 pieces into a float32 column
    for key, score in zip(keys, scores, strict=True):
        columns.add(key, score)
    whole_keys, whole_scores = columns.arrays()
    assert len(columns) == sum(lengths) and whole_scores.dtype == np.float32
    np.testing.assert_array_equal(whole_keys, np.concatenate(keys))
    np.testing.assert_array_equal(whole_scores, np.concatenate(scores).astype(np.float32))
    assert len(columns.blocks) == 3  # FIRST_BLOCK, then 2x and 4x: one allocation per block, not per piece
