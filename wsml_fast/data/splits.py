"""The one rule that holds out part of a train split for validation: `wsml prepare` on a dataset without an
official valid split, and training on a CSV without valid rows. It is the reference code's split of the official
train set, reproduced index for index (`prepare --protocol reference` depends on it)."""

from __future__ import annotations

import numpy as np

VALID_FRACTION = 0.2


def split_train_valid(n: int, seed: int, fraction: float = VALID_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, valid) row indices: the last round(fraction * n) of a seeded permutation are valid.

    Same rule and random stream as the single-positive reference code, so the rows match its splits.
    """
    n_valid = int(np.round(fraction * n))
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[: n - n_valid]), np.sort(perm[n - n_valid :])
