"""Frozen-backbone features, extracted once and cached on disk: the fast path of `--mode linear`.

The cache key covers everything the features depend on (backbone, its weights, input size, precision, the image
list and the label file's content stamp), so a cached file is reused only when it would be recomputed identically.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wsml_fast.core.atomic import save_torch
from wsml_fast.core.errors import WsmlError
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
    """The features from the cache, else extracted and cached. A cache file that cannot be read whole (cut short
    by a full disk or a copy) is extracted again; a cache folder that cannot be written (a read-only `WSML_HOME`)
    costs the extraction again next time, not the run."""
    path = feature_cache_dir() / f"{key}.pt"
    cached = _read_cache(path, (len(dataset), model.body.num_features), say)
    if cached is not None:
        say(f"features: {len(dataset)} from cache {path}")
        return cached
    with untouched_random_state():  # a run draws the same numbers whether its features were cached or not
        features = extract_features(model, dataset, bs, workers, precision, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(path, features)
    except (OSError, WsmlError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        say(f"note: features not cached ({path.parent}: {reason}); set WSML_HOME to a writable folder to keep them")
    else:
        say(f"features: {len(dataset)} extracted, cached in {path}")
    return features


def _read_cache(path: Path, shape: tuple[int, int], say) -> torch.Tensor | None:
    """The cached features of `shape`, or None when there are none or the file is damaged (said in a note)."""
    if not path.is_file():
        return None
    try:
        features = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        features = None
    if isinstance(features, torch.Tensor) and tuple(features.shape) == shape:
        return features
    say(f"note: the feature cache {path} is damaged (cut short?); extracting the features again")
    return None


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
