"""`wsml predict`: class probabilities for images or folders of images, from a trained model alone.

Images are scored and written a batch at a time, so a million images never make an images x classes frame."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from wsml_fast.core.atomic import atomic_write
from wsml_fast.core.errors import WsmlError

PROBABILITY = re.compile(r"[01]\.\d{6}")  # a cell as `write_predictions` writes it
SEPARATOR = "|"  # between the labels, and between the scores, of --top-k
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files named directly, plus every image under named folders (sorted, recursive)."""
    found: list[Path] = []
    for path in paths:
        try:
            path.stat()
        except FileNotFoundError:
            raise WsmlError(f"{path}: no such file or folder") from None
        except OSError as exc:  # a name longer than the file system allows, a folder that cannot be entered
            raise WsmlError(f"{path}: cannot be read ({exc.strerror})") from None
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not inside:
                raise WsmlError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise WsmlError(f"{path}: no such file or folder")
    return found


def best_classes(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the `k` highest probabilities and those probabilities, highest first."""
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(probabilities, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return top, np.take_along_axis(probabilities, top, axis=1)


@dataclass
class PredictionRows:
    """How a batch of probabilities becomes CSV rows and terminal lines: every class's probability (the
    default) or the `top_k` best classes, `|`-separated. The terminal shows the labels decided at each class's
    threshold (`thresholds`: one per class, the model's, or one value for all)."""

    classes: list[str]
    thresholds: np.ndarray | float = 0.5
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.top_k is None:
            return
        if not 1 <= self.top_k <= len(self.classes):
            raise WsmlError(f"--top-k {self.top_k}: give a number from 1 to {len(self.classes)} (the run's classes)")
        if clash := next((c for c in self.classes if SEPARATOR in c), None):
            raise WsmlError(
                f"--top-k: class {clash!r} holds {SEPARATOR!r}, the separator of the labels column; leave out "
                "--top-k to get one column per class"
            )

    def frame(self, names: list[str], probabilities: np.ndarray) -> pd.DataFrame:
        if self.top_k is None:
            frame = pd.DataFrame(probabilities, columns=self.classes)
            frame.insert(0, "image", names)
            return frame
        top, scores = best_classes(probabilities, self.top_k)
        classes = np.array(self.classes, dtype=object)
        return pd.DataFrame(
            {
                "image": names,
                "labels": [SEPARATOR.join(row) for row in classes[top]],
                "scores": [SEPARATOR.join(f"{p:.6f}" for p in row) for row in scores],
            }
        )

    def lines(self, names: list[str], probabilities: np.ndarray) -> Iterator[str]:
        """`image: label (p), ...`: the labels at or above their thresholds, or the top k."""
        if self.top_k is None:
            chosen = [np.flatnonzero(row >= self.thresholds) for row in probabilities]
        else:
            chosen = best_classes(probabilities, self.top_k)[0]
        for name, row, columns in zip(names, probabilities, chosen, strict=True):
            labels = [f"{self.classes[c]} ({row[c]:.2f})" for c in columns]
            yield f"{name}: {', '.join(labels) if labels else '(none)'}"


def write_predictions(
    out: Path, batches: Iterable[tuple[list[str], np.ndarray]], rows: PredictionRows, show: Callable[[str], None]
) -> int:
    """Write the CSV a batch at a time, showing each image's line as its batch is done; return the row count.
    The file appears under `out` only when complete (an atomic write); an interrupted predict leaves none."""
    written = 0

    def write(handle: BinaryIO) -> None:
        nonlocal written
        for names, probabilities in batches:
            text = rows.frame(names, probabilities).to_csv(index=False, header=not written, float_format="%.6f")
            handle.write(text.encode())
            written += len(names)
            for line in rows.lines(names, probabilities):
                show(line)

    atomic_write(out, write)
    return written


def check_replacing(out: Path, classes: list[str], model: Path, images: list[Path], overwrite: bool) -> None:
    """An existing `--out` is replaced when it is an earlier predictions CSV of wsml's, or with `overwrite`; never
    (even with `overwrite`) when it is the model or one of the images being scored."""
    if not out.exists() or is_predictions_csv(out, classes):
        return
    if not overwrite:
        raise WsmlError(
            f"--out {out}: exists and is not a predictions CSV of wsml's; choose another file, or pass --overwrite "
            "to replace it"
        )
    target = out.stat()
    for used in (model, *images):
        found = used.stat()
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            what = "the model being used" if used is model else "one of the images being scored"
            raise WsmlError(f"--out {out}: is {what}; write predictions elsewhere")


def is_predictions_csv(path: Path, classes: list[str]) -> bool:
    """Whether `path` is what `wsml predict` writes for a model of `classes`: a header `image,labels,scores`
    (--top-k), or `image` and the classes over rows of probabilities written with 6 decimals (a label file with
    the same header holds 1, 0 or nothing)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            header, first = next(rows, None), next(rows, None)
    except (OSError, UnicodeDecodeError, csv.Error):  # (csv.Error: a "line" longer than any CSV field)
        return False
    if header == ["image", "labels", "scores"]:
        return True
    return header == ["image", *classes] and (first is None or all(PROBABILITY.fullmatch(c) for c in first[1:]))
