"""Scoring a split batch by batch: `score_split` against sklearn's per-class AP of the whole split."""

import numpy as np
import pytest
import torch
from helpers import partial_labels, sklearn_map

from wsml_fast.data.labelstore import LabelStore
from wsml_fast.model.scoring import score_split
from wsml_fast.training.features import FeatureDataset


@pytest.fixture
def head_and_features() -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    features = torch.randn(53, 8)
    _, labels = partial_labels(np.random.default_rng(5), 53, 9)
    return torch.nn.Linear(8, 9), features, labels


def expected(model: torch.nn.Module, features: torch.Tensor, labels: np.ndarray, convention: str) -> tuple:
    with torch.no_grad():
        return sklearn_map(torch.sigmoid(model(features)).numpy(), labels, convention)


@pytest.mark.parametrize("convention", ["skip", "paper"])
def test_score_split_streams_the_batch_labels(head_and_features: tuple, convention: str) -> None:
    model, features, labels = head_and_features
    dataset = FeatureDataset(features, LabelStore.from_dense(labels))
    result = score_split(model, dataset, "fp32", torch.device("cpu"), 8, 0).result(None, convention)
    per_class, skipped, mean = expected(model, features, labels, convention)
    assert result.per_class == pytest.approx(per_class, rel=1e-6)
    assert result.skipped == skipped and result.map == pytest.approx(mean, rel=1e-6)


def test_score_split_takes_labels_from_targets_when_given(head_and_features: tuple) -> None:
    """`targets` maps a batch's item indices to its dense labels; the dataset's own labels are then unused."""
    model, features, labels = head_and_features
    dataset = FeatureDataset(features, LabelStore.empty(*labels.shape))
    store = torch.from_numpy(labels)
    asked = []

    def targets(index: torch.Tensor) -> torch.Tensor:
        asked.append(index.clone())
        return store[index]

    result = score_split(model, dataset, "fp32", torch.device("cpu"), 8, 0, targets).result()
    per_class, skipped, mean = expected(model, features, labels, "skip")
    assert result.per_class == pytest.approx(per_class, rel=1e-6) and result.skipped == skipped
    assert sorted(torch.cat(asked).tolist()) == list(range(53)) and max(len(i) for i in asked) == 8
