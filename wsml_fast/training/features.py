"""Frozen-backbone features, extracted once and cached on disk: the fast path of `--mode linear`.

The cache key covers everything the features depend on (backbone, its weights, input size, precision, the image
list and the label file's content stamp), so a cached file is reused only when it would be recomputed identically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wsml_fast.core.randomness import untouched_random_state
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset, make_loader
from wsml_fast.model.classifier import Classifier
from wsml_fast.model.scoring import autocast


def feature_cache_dir() -> Path:
    from wsml_fast.data.sources import data_home

    return data_home().parent / "cache" / "features"


def cache_key(
    backbone: str, weights_origin: str, img_size: int, precision: str, dataset: ImageLabelDataset, stamp: str
) -> str:
    text = json.dumps([backbone, weights_origin, img_size, precision, str(dataset.root), dataset.images, stamp])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.inference_mode()
def extract_features(
    model: Classifier, dataset: ImageLabelDataset, bs: int, workers: int, precision: str, device: torch.device
) -> torch.Tensor:
    """Pooled body features (N, F) of every image, in dataset order, computed without augmentation."""
    model.eval()
    features = torch.zeros(len(dataset), model.body.num_features)
    for images, index in make_loader(dataset, bs, False, workers, device):
        with autocast(precision, device):
            out = model.features(images)
        features[index.cpu()] = out.float().cpu()
    return features


def cached_features(
    model: Classifier,
    dataset: ImageLabelDataset,
    key: str,
    bs: int,
    workers: int,
    precision: str,
    device: torch.device,
    say,
) -> torch.Tensor:
    path = feature_cache_dir() / f"{key}.pt"
    if path.is_file():
        say(f"features: {len(dataset)} from cache {path}")
        return torch.load(path, weights_only=True)
    with untouched_random_state():  # a run draws the same numbers whether its features were cached or not
        features = extract_features(model, dataset, bs, workers, precision, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    say(f"features: {len(dataset)} extracted, cached in {path}")
    return features


class FeatureDataset(Dataset):
    """Row i: (feature vector, i), the same item shape as ImageLabelDataset (labels in `labels`, a store)."""

    def __init__(self, features: torch.Tensor, labels: LabelStore) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.features[i], i

    def reseed(self, seed: int) -> None:  # nothing random here; the loader's worker hook calls it
        pass

    def random_state(self) -> list:
        return []

    def set_random_state(self, state: list) -> None:
        pass

    def subset(self, rows: np.ndarray) -> FeatureDataset:
        return FeatureDataset(self.features[rows], self.labels.take(rows))
