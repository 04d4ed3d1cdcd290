import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from wsml_fast.metrics import mean_average_precision


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
