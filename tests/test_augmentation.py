"""Augmentations must differ across DataLoader workers and across epochs (albumentations 2.0.8 repeats them
in every worker unless each worker reseeds its pipeline)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset, make_loader


@pytest.fixture(scope="module")
def asymmetric_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("asym")
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, :4] = 255  # bright left edge: a flip moves it to the right
    Image.fromarray(pixels).save(root / "a.png")
    return root, ["a.png"] * 128


def flips(loader) -> list[tuple[bool, ...]]:
    """Per batch: which items came out flipped."""
    return [tuple(bool(x) for x in (images[:, 0, 0, -1] > 0)) for images, _ in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_flips_differ_between_batches_workers_and_epochs(asymmetric_images, workers: int) -> None:
    root, images = asymmetric_images
    dataset = ImageLabelDataset(root, images, LabelStore.empty(128, 1), 16, augment=True, seed=0)
    # no shuffle: only the flips vary; batches of 32 make a chance repeat of a pattern negligible (6 pairs / 2**32)
    loader = make_loader(dataset, 32, False, workers, torch.device("cpu"))
    first, second = flips(loader), flips(loader)
    assert first != second  # a new epoch draws new augmentations
    assert len(set(first)) == len(first)  # no two batches (worker 0's and worker 1's included) repeat a pattern
    assert 0.25 < np.mean(first) < 0.75
