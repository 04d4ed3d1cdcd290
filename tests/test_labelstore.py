"""The sparse label store against the dense matrix it stands for, on random tables of every kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsml_fast.data.labelstore import LabelStore


def random_matrix(seed: int, fill: int, shape: tuple[int, int] = (37, 11)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = np.full(shape, fill, dtype=np.float32)
    listed = rng.random(shape) < 0.2
    matrix[listed] = rng.choice([v for v in (1, 0, -1) if v != fill], size=int(listed.sum()))
    matrix[5] = fill  # a row without any entry
    return matrix


@pytest.mark.parametrize(("seed", "fill"), [(0, -1), (1, 0), (2, -1)])
def test_the_store_answers_as_the_dense_matrix_does(seed: int, fill: int) -> None:
    dense = random_matrix(seed, fill)
    store = LabelStore.from_dense(dense, fill)
    assert np.array_equal(store.to_dense(), dense)
    assert np.all(np.diff(store.keys) > 0) and len(store.keys) == int((dense != fill).sum())
    rows = np.array([7, 2, 5, 36, 2])  # any order, repeats, an empty row
    assert np.array_equal(store.take(rows).to_dense(), dense[rows])
    assert np.array_equal(store.take(np.array([1, 3, 4])).to_dense(), dense[[1, 3, 4]])
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, 37, 50), rng.integers(0, 11, 50)
    assert np.array_equal(store.lookup(r, c), dense[r, c])
    for value in (1, 0, -1):
        assert np.array_equal(store.count(value, axis=0), (dense == value).sum(0))
        assert np.array_equal(store.count(value, axis=1), (dense == value).sum(1))
    listed = next(v for v in (1, 0, -1) if v != fill)
    assert set(zip(*store.entries(listed), strict=True)) == set(zip(*np.nonzero(dense == listed), strict=True))


def test_batches_are_made_dense_on_the_device_as_the_matrix_has_them() -> None:
    dense = random_matrix(3, -1)
    on_device = LabelStore.from_dense(dense).to(torch.device("cpu"))
    rows = torch.tensor([5, 0, 36, 5, 12])
    torch.testing.assert_close(on_device.dense(rows), torch.from_numpy(dense[rows.numpy()]))
    r, c = torch.tensor([0, 5, 36, 12]), torch.tensor([3, 1, 10, 0])
    torch.testing.assert_close(on_device.lookup(r, c), torch.from_numpy(dense[r.numpy(), c.numpy()]))
    empty = LabelStore.from_dense(np.full((3, 4), -1.0)).to(torch.device("cpu"))
    assert torch.equal(empty.dense(torch.tensor([2, 0])), torch.full((2, 4), -1.0))


def test_entries_listed_twice_must_agree() -> None:
    store = LabelStore.from_entries(2, 3, np.array([1, 0, 1]), np.array([2, 0, 2]), np.array([1, 0, 1]), fill=-1)
    assert store.to_dense().tolist() == [[0, -1, -1], [-1, -1, 1]]
    with pytest.raises(ValueError, match="listed twice with different values"):
        LabelStore.from_entries(1, 3, np.array([0, 0]), np.array([2, 2]), np.array([1, 0]), fill=-1)


def test_memory_grows_with_the_entries_not_the_matrix() -> None:
    rows = np.arange(200_000)
    store = LabelStore.from_entries(200_000, 9_600, rows, rows % 9_600, np.ones(200_000), fill=-1)
    assert store.nbytes == 200_000 * 9  # 9 bytes an entry, against 7.7 GB for the dense float32 matrix
