from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import partial_labels, sklearn_map
from sklearn.metrics import average_precision_score

from wsml_fast.model.metrics import APAccumulator, MapMetric, _labelled, _labelled_tensors, mean_average_precision


def test_map_leaves_out_unlabelled_entries_per_class() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((40, 3))
    labels = (rng.random((40, 3)) > 0.6).astype(float)
    labels[rng.random((40, 3)) > 0.7] = -1
    result = mean_average_precision(scores, labels, ["a", "b", "c"])
    expected = []
    for c in range(3):
        known = labels[:, c] >= 0
        expected.append(100 * average_precision_score(labels[known, c], scores[known, c]))
    assert result.per_class == pytest.approx(dict(zip("abc", expected, strict=True)))
    assert result.map == pytest.approx(np.mean(expected))
    assert result.skipped == []


def test_degenerate_classes_are_skipped_or_zero_by_convention() -> None:
    scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.4, 0.6, 0.7]])
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 0, -1]])  # class b: no positive; class c: no negative
    skip = mean_average_precision(scores, labels, ["a", "b", "c"])
    assert skip.skipped == ["b", "c"]
    assert skip.map == pytest.approx(100.0)
    paper = mean_average_precision(scores, labels, ["a", "b", "c"], convention="paper")
    assert paper.per_class == pytest.approx({"a": 100.0, "b": 0.0, "c": 100.0})
    assert paper.map == pytest.approx(200 / 3)


def test_no_scorable_class_gives_nan() -> None:
    assert np.isnan(mean_average_precision(np.ones((2, 1)), np.array([[-1], [-1]])).map)


# ---------------------------------------------------------------- the accumulator, against sklearn class by class


@pytest.mark.parametrize("convention", ["skip", "paper"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_batches_give_sklearns_map_of_the_whole(convention: str, as_tensor: bool) -> None:
    rng = np.random.default_rng(7)
    scores, labels = partial_labels(rng, 300, 23)
    accumulator = APAccumulator()
    for start, end in [(0, 1), (1, 1), (1, 64), (64, 200), (200, 300)]:  # uneven, with an empty batch
        batch = (scores[start:end], labels[start:end])
        accumulator.add(*(torch.from_numpy(a) for a in batch) if as_tensor else batch)
    result = accumulator.result(convention=convention)
    per_class, skipped, expected_map = sklearn_map(scores, labels, convention)
    assert result.per_class == pytest.approx(per_class, rel=1e-12)
    assert list(result.per_class) == list(per_class)
    assert result.skipped == skipped
    assert result.map == pytest.approx(expected_map, rel=1e-12)
    assert accumulator.n_entries == int((labels >= 0).sum())


def test_tied_scores_form_one_threshold() -> None:
    # thresholds 0.9 (1 of 1 right, recall 1/2) and 0.5 (2 of 3 right, recall 1): AP = 1/2 + 1/2 x 2/3
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    labels = np.array([[1], [0], [1], [0]])
    assert mean_average_precision(scores, labels).per_class["0"] == pytest.approx(100 * 5 / 6)


def test_only_labelled_entries_are_kept() -> None:
    """OpenImages-like labels keep a handful of entries a row; a full truth keeps all N x C."""
    rng = np.random.default_rng(1)
    labels = np.full((50, 1000), -1.0, dtype=np.float32)
    rows, cols = np.repeat(np.arange(50), 4), rng.integers(0, 1000, 200)
    labels[rows, cols] = rng.integers(0, 2, 200)
    sparse, dense = APAccumulator(), APAccumulator()
    sparse.add(rng.random((50, 1000)), labels)
    dense.add(rng.random((50, 1000)), np.where(labels < 0, 0, labels))
    assert sparse.n_entries == len(set(zip(rows, cols, strict=True)))
    assert dense.n_entries == 50 * 1000


def test_batches_must_agree_in_shape_and_classes() -> None:
    accumulator = APAccumulator()
    with pytest.raises(ValueError, match="need two equal"):
        accumulator.add(np.zeros((2, 3)), np.zeros((2, 4)))
    accumulator.add(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="a batch of 4 classes after batches of 3"):
        accumulator.add(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2 class names for batches of 3 classes"):
        accumulator.result(["a", "b"])
    with pytest.raises(ValueError, match="scores hold NaN"):
        accumulator.add(np.full((1, 3), np.nan), np.ones((1, 3)))


def test_fastai_metric_scores_sigmoid_of_the_logits_batch_by_batch() -> None:
    rng = np.random.default_rng(3)
    scores, labels = partial_labels(rng, 40, 6)
    logits = torch.logit(torch.from_numpy(scores).double().clamp(0.01, 0.99)).half()  # as mixed precision gives
    metric = MapMetric("paper")
    metric.accumulate(SimpleNamespace(pred=torch.zeros(3, 6), yb=(torch.ones(3, 6),)))
    metric.reset()
    for rows in np.array_split(np.arange(40), 3):
        metric.accumulate(SimpleNamespace(pred=logits[rows], yb=(torch.from_numpy(labels[rows]),)))
    probabilities = torch.sigmoid(logits.float()).numpy()
    assert metric.value == pytest.approx(sklearn_map(probabilities, labels, "paper")[2], rel=1e-12)
    assert metric.name == "valid_map"


def test_device_tensors_are_filtered_where_they_are() -> None:
    """The filter `add` uses on tensors of a GPU, run here on CPU tensors: the same entries as numpy's."""
    scores, labels = partial_labels(np.random.default_rng(2), 30, 7)
    on_device = _labelled_tensors(torch.from_numpy(scores), torch.from_numpy(labels))
    for got, expected in zip(on_device, _labelled(scores, labels), strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(on_device[0], np.flatnonzero(labels >= 0))


def test_class_numbers_beyond_sixteen_bits_are_kept() -> None:
    rng = np.random.default_rng(4)
    scores, labels = rng.random((6, 70_000)), np.full((6, 70_000), -1.0)
    for c in (3, 65_537, 69_999):
        labels[:, c] = rng.permutation([1, 0, 1, 0, 0, 1])
    accumulator = APAccumulator()
    accumulator.add(scores, labels)
    result = accumulator.result()
    expected = {str(c): 100 * average_precision_score(labels[:, c], scores[:, c]) for c in (3, 65_537, 69_999)}
    assert result.per_class == pytest.approx(expected, rel=1e-12) and len(result.skipped) == 70_000 - 3
