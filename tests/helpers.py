"""Helpers the test modules share (no test module imports from another): files, the command line, a tiny wsml
Learner, a stop request that arrives on cue, the hooked `wsml` for subprocess runs, and mAP by scikit-learn."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import SGD
from sklearn.metrics import average_precision_score
from torch.utils.data import Dataset
from typer.testing import CliRunner

from wsml_fast.cli import app
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.schemes.build import SchemeParts
from wsml_fast.schemes.losses import AssumeNegativeLoss
from wsml_fast.training.learner import wsml_learner
from wsml_fast.training.stopping import StopRequest

# Files and the command line

TINY = ["--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32", "--bs", "16", "--epochs", "2"]
HOOKED = Path(__file__).with_name("hooked_wsml.py")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_of(*args: str) -> str:
    """The one line a failing command writes to stderr (stdout may hold what a run printed before it failed)."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def hooked_env(**hooks: str) -> dict[str, str]:
    """The environment of a hooked `wsml`: this checkout's wsml_fast (wherever one is installed) and the hooks."""
    return {**os.environ, "PYTHONPATH": str(HOOKED.parents[1]), **hooks}


class StopAfter(StopRequest):
    """A SIGTERM that arrives after `batches` batch boundaries."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    def __call__(self) -> bool:
        self.left -= 1
        if self.left < 0:
            self.signum = signal.SIGTERM
        return super().__call__()


# A tiny real Learner: 32 items, 5 classes, one observed positive per item, batches of 8 (4 per epoch).
N, C, BS = 32, 5, 8


class TinyDataset(Dataset):
    """(float image, item index) and a label store, like wsml's ImageLabelDataset."""

    def __init__(self, labels: np.ndarray) -> None:
        self.images = torch.randn(len(labels), 3, 4, 4, generator=torch.Generator().manual_seed(1))
        self.labels = LabelStore.from_dense(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], i


def observed_labels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.full((N, C), -1.0, dtype=np.float32)
    labels[np.arange(N), rng.integers(0, C, N)] = 1.0
    return labels


def truth_labels(seed: int = 0) -> np.ndarray:
    truth = (np.random.default_rng(seed + 1).random((N, C)) < 0.3).astype(np.float32)
    return np.maximum(truth, observed_labels(seed) == 1)


def tiny_learner(
    cbs: list[Callback],
    labels: np.ndarray,
    workers: int = 0,
    bs: int = BS,
    shuffle: bool = True,
    opt_func=SGD,
    parts: SchemeParts | None = None,
) -> Learner:
    """A wsml Learner (the factory's) on tiny data: batches carry item indices, `parts` is the scheme (AN)."""
    dataset = TinyDataset(labels)
    train = DataLoader(dataset, bs=bs, shuffle=shuffle, drop_last=True, num_workers=workers)
    valid = DataLoader(dataset, bs=bs, num_workers=0)
    train.n_inp = valid.n_inp = 1
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, C))
    parts = parts or SchemeParts(AssumeNegativeLoss())
    return wsml_learner(DataLoaders(train, valid), model, parts, cbs, opt_func=opt_func)


def callback_of(parts: SchemeParts, kind: type[Callback]) -> Callback:
    """The scheme's callback of class `kind`."""
    return next(callback for callback in parts.callbacks if isinstance(callback, kind))


# mAP, written out with scikit-learn


def sklearn_map(scores: np.ndarray, labels: np.ndarray, convention: str) -> tuple[dict, list, float]:
    """The dense rule, written out with sklearn: per-class AP of the labelled entries, degenerate classes
    skipped (skip) or scored 0 when they have no positive (paper)."""
    per_class, skipped = {}, []
    for c in range(labels.shape[1]):
        known = labels[:, c] >= 0
        truth = labels[known, c] == 1
        if not truth.any() and convention == "paper":
            per_class[str(c)] = 0.0
        elif not truth.any() or (truth.all() and convention == "skip"):
            skipped.append(str(c))
        else:
            per_class[str(c)] = 100 * average_precision_score(truth, scores[known, c])
    return per_class, skipped, float(np.mean(list(per_class.values()))) if per_class else float("nan")


def partial_labels(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores with many ties (rounded to 0.1) and labels with unlabelled entries, classes without positives,
    without negatives and without any label."""
    scores = np.round(rng.random((n, c)), 1).astype(np.float32)
    labels = (rng.random((n, c)) < 0.3).astype(np.float32)
    labels[rng.random((n, c)) < 0.5] = -1
    labels[:, 0] = np.where(labels[:, 0] >= 0, 0, -1)  # no positive
    labels[:, 1] = np.where(labels[:, 1] >= 0, 1, -1)  # no negative
    labels[:, 2] = -1  # nothing labelled
    return scores, labels
