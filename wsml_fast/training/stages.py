"""The stages of a run and their inputs.

A run trains in one or two stages. Each stage trains on images (the whole classifier, end to end) or on the
frozen body's features, extracted once and cached (the head alone: the fast path). `--mode linear` is one
feature stage, `--mode end-to-end` one image stage, and `--mode linear-init` (Cole et al.'s protocol) a feature
stage of `linear_epochs` followed by an image stage of `epochs` that starts from the best feature epoch.
Every stage's data is built before training starts, so a resumed run sees the same loaders and random streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from fastai.data.core import DataLoaders
from torch.utils.data import Dataset

from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset, make_loader, process_seed
from wsml_fast.model.scoring import evaluation_bs
from wsml_fast.training.config import TrainConfig
from wsml_fast.training.features import FeatureDataset, cache_key, cached_features
from wsml_fast.training.setup import Setup

RECOVERY_SAMPLE = 1000  # training images scored per epoch for train_recovery_map
IMAGES, FEATURES = "images", "features"


@dataclass(frozen=True)
class Stage:
    """One fit of a run: `epochs` epochs after `start` completed ones, on `inputs`, at `lr` and batch `bs`."""

    start: int
    epochs: int
    inputs: str
    lr: float
    bs: int

    @property
    def end(self) -> int:
        return self.start + self.epochs


def stages(config: TrainConfig) -> list[Stage]:
    if config.mode == "end-to-end":
        return [Stage(0, config.epochs, IMAGES, config.lr, config.bs)]
    if config.mode == "linear":
        return [Stage(0, config.epochs, FEATURES, config.lr, config.bs)]
    linear_lr, linear_bs = config.linear_lr or config.lr, config.linear_bs or config.bs
    linear = Stage(0, config.linear_epochs, FEATURES, linear_lr, linear_bs)
    return [s for s in (linear, Stage(linear.end, config.epochs, IMAGES, config.lr, config.bs)) if s.epochs > 0]


@dataclass
class StageData:
    """A stage's inputs and all that is made of them: what the Learner trains on them (the classifier, or its
    head on features), the loaders, the training inputs without augmentation (with the training labels, and,
    given a truth.csv, with the truth) and the sample that train_recovery_map scores."""

    inputs: str
    module: torch.nn.Module
    loaders: DataLoaders
    plain_train: Dataset
    truth_view: Dataset | None
    recovery: Dataset | None

    @property
    def train(self) -> Dataset:
        return self.loaders.train.dataset


def image_dataset(setup: Setup, split: str, labels: LabelStore, augment: bool) -> ImageLabelDataset:
    config, table = setup.config, setup.table
    images = [table.images[i] for i in table.rows(split)]
    seed = process_seed(config.seed, setup.process.rank)
    return ImageLabelDataset(table.source.images_root, images, labels, config.img_size, augment, config.hflip, seed)


def _image_sets(setup: Setup) -> tuple[Dataset, Dataset, Dataset, Dataset | None]:
    """(train with augmentation, valid, train without augmentation, the same with the truth or None)."""
    train = image_dataset(setup, "train", setup.train_labels, True)
    valid = image_dataset(setup, "valid", setup.table.eval_labels("valid"), False)
    truth = setup.table.train_truth()
    return train, valid, train.without_augmentation(), None if truth is None else train.without_augmentation(truth)


def _feature_sets(setup: Setup) -> tuple[Dataset, Dataset, Dataset, Dataset | None]:
    """The same four, on the frozen body's features (extracted once, unaugmented, and cached)."""
    config, images = setup.config, _image_sets(setup)
    stamp = str(setup.table.source.observed_csv.stat().st_mtime_ns)

    def features(dataset: ImageLabelDataset) -> torch.Tensor:
        key = cache_key(config.backbone, setup.origin, config.img_size, setup.precision, dataset, stamp)
        plain = dataset.without_augmentation()
        args = (evaluation_bs(config.bs), config.workers, setup.precision, setup.device, setup.say)
        return cached_features(setup.model, plain, key, *args)

    train = FeatureDataset(features(images[0]), setup.train_labels)
    valid = FeatureDataset(features(images[1]), images[1].labels)
    truth = setup.table.train_truth()
    return train, valid, train, None if truth is None else FeatureDataset(train.features, truth)


def stage_data(setup: Setup, inputs: str, bs: int) -> StageData:
    train, valid, plain, truth_view = (_image_sets if inputs == IMAGES else _feature_sets)(setup)
    config, device = setup.config, setup.device
    loaders = DataLoaders(
        make_loader(train, bs, True, config.workers, device, setup.process.rank),
        make_loader(valid, bs, False, config.workers, device, setup.process.rank),
        device=device,
    )
    recovery = None
    if truth_view is not None:
        rng = np.random.default_rng(config.seed)
        recovery = truth_view.subset(np.sort(rng.permutation(len(truth_view))[:RECOVERY_SAMPLE]))
    module = setup.model if inputs == IMAGES else setup.model.head
    return StageData(inputs, module, loaders, plain, truth_view, recovery)
