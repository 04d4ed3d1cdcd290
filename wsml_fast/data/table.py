"""A dataset's labels in memory: observed and (optional) true labels, split per row, checked against the files."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import align_truth, outside_root_note, read_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.data.splits import split_train_valid


@dataclass
class PartialLabelTable:
    """Rows are images; `observed` holds 1 / 0 and -1 (unobserved) elsewhere, `truth` (if known) 1 and 0
    elsewhere; both are sparse stores (memory grows with the listed labels)."""

    source: DatasetFiles
    images: list[str]
    splits: np.ndarray
    classes: list[str]
    observed: LabelStore
    truth: LabelStore | None
    notes: list[str] = field(default_factory=list)
    _taken: dict[str, LabelStore] = field(default_factory=dict, init=False, repr=False, compare=False)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def observed_of(self, split: str) -> LabelStore:
        """The observed labels of `split`'s rows, taken once (the training set's are read by several parts)."""
        if split not in self._taken:
            self._taken[split] = self.observed.take(self.rows(split))
        return self._taken[split]

    def eval_labels(self, split: str) -> LabelStore:
        """Labels to score `split` against: the full truth when known, else the observed entries only."""
        labels = self.truth if self.truth is not None else self.observed
        return labels.take(self.rows(split))

    def train_truth(self) -> LabelStore | None:
        """The full truth of the train rows, when there is a truth.csv (taken once)."""
        if self.truth is not None and "truth:train" not in self._taken:
            self._taken["truth:train"] = self.truth.take(self.rows("train"))
        return self._taken.get("truth:train")

    def expected_positives(self) -> float | None:
        """Mean positives per train image from the truth, when there is a truth."""
        truth = self.train_truth()
        return None if truth is None else float(truth.count(1, axis=1).mean())


def _hold_out_valid(splits: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """`splits` with `fraction` of its train rows made valid, by `wsml prepare`'s rule (`split_train_valid`).
    (Before this rule was shared, training drew these rows with another generator: a CSV without valid rows
    now holds out other rows than it did then, the same ones `wsml prepare` would.)"""
    train = np.flatnonzero(splits == "train")
    kept, valid = split_train_valid(len(train), seed, fraction)
    if not len(valid) or not len(kept):
        raise WsmlError(f"only {len(train)} train rows: too few to hold out a validation part; add valid rows")
    splits = splits.copy()
    splits[train[valid]] = "valid"
    return splits


def _without_positives(observed: LabelStore, train: np.ndarray, classes: list[str]) -> str | None:
    """A line naming the classes with no observed positive among the train rows, or None."""
    if not train.any():
        return None
    rows, cols = observed.rows_and_cols()
    in_train = train[rows] & (observed.values == 1)
    absent = np.flatnonzero(np.bincount(cols[in_train], minlength=observed.n_classes) == 0)
    if not absent.size:
        return None
    names = ", ".join(classes[i] for i in absent[:3])
    many = absent.size > 1
    return (
        f"{absent.size} class{'es' if many else ''} {'have' if many else 'has'} no observed positive in train "
        f"(first: {names}); {'they' if many else 'it'} can only be learned as negative{'s' if many else ''}"
    )


def load_table(
    source: DatasetFiles, valid_fraction: float = 0.2, seed: int = 0, for_training: bool = True
) -> PartialLabelTable:
    """Read the label files of `source`, align the truth and settle the splits.

    Training needs train rows; evaluation data may hold any splits (the same hold-out is redone when it can be).
    """
    observed = read_label_csv(source.observed_csv)
    if not observed.images:
        raise WsmlError(f"{source.observed_csv}: no rows after the header; list one image a line")
    truth = None
    if source.truth_csv is not None:
        truth = align_truth(observed, read_label_csv(source.truth_csv, complete=True))
    labels = observed.store
    notes = []
    splits = observed.splits
    if splits is None:
        splits = np.full(len(observed.images), "train", dtype=object)
        notes.append(f"{source.observed_csv.name} has no split column: every row is used for training")
    if for_training and not (splits == "train").any():
        raise WsmlError(f"{source.observed_csv}: no rows with split 'train'; there is nothing to train on")
    if not (splits == "valid").any() and (for_training or (splits == "train").sum() > 1):
        splits = _hold_out_valid(splits, valid_fraction, seed)
        notes.append(f"no valid rows: held out {valid_fraction:.0%} of train as valid (seed {seed})")
    if (unseen := _without_positives(labels, splits == "train", observed.classes)) is not None:
        notes.append(unseen)
    if (outside := outside_root_note(observed.images, source.images_root)) is not None:
        notes.append(outside)
    return PartialLabelTable(source, observed.images, splits, observed.classes, labels, truth, notes)


CHECK_CHUNK = 256  # images a thread checks at a time: few tasks to schedule, a progress step every chunk
IMAGE_PROBLEMS = ("missing", "name too long", "unreadable", "too large", "float")  # in the order they are reported


def check_images(root: Path, images: list[str], csv: Path, threads: int | None = None, speaks: bool = True) -> None:
    """Every listed image must exist, have a readable header and be decodable, before any training starts.

    Headers are read by `threads` threads (default: from the CPU count), since opening files waits on the disk
    more than it computes; problems are reported in list order whatever the threads. On a terminal, a line
    counting the images checked is kept up to date (by the process that `speaks`: one of a data-parallel run)."""
    progress = sys.stdout if speaks and sys.stdout.isatty() else None
    counts, first = _scan(root, images, threads or min(32, 4 * (os.cpu_count() or 1)), progress)
    for problem in IMAGE_PROBLEMS:
        if counts[problem]:
            what, advice = _described(problem)
            raise WsmlError(
                f"{csv}: {counts[problem]} of {len(images)} listed images {what} under {root} "
                f"(first: {', '.join(first[problem])}); {advice}"
            )


def _scan(
    root: Path, images: list[str], threads: int, progress: TextIO | None
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """How many images have each problem, and the first three of each in list order."""
    counts, first = dict.fromkeys(IMAGE_PROBLEMS, 0), {problem: [] for problem in IMAGE_PROBLEMS}
    chunks = [images[i : i + CHECK_CHUNK] for i in range(0, len(images), CHECK_CHUNK)]
    pool = ThreadPoolExecutor(threads)
    try:
        done, shown = 0, 0.0
        for chunk, found in zip(chunks, pool.map(partial(_chunk_problems, root), chunks), strict=True):
            for name, problem in found:
                counts[problem] += 1
                first[problem] += [name][: 3 - len(first[problem])]
            done += len(chunk)
            if progress is not None and (time.monotonic() - shown > 0.1 or done == len(images)):
                progress.write(f"\rchecking images: {done:,} of {len(images):,}" + "\n" * (done == len(images)))
                progress.flush()
                shown = time.monotonic()
    finally:
        pool.shutdown(cancel_futures=True)  # after an error or Ctrl-C, the chunks not started are dropped
    return counts, first


def _chunk_problems(root: Path, names: list[str]) -> list[tuple[str, str]]:
    """(name, problem) of each image of `names` that has one."""
    return [(name, problem) for name in names if (problem := _image_problem(root / name)) is not None]


def _image_problem(path: Path) -> str | None:
    """What is wrong with one image (one of IMAGE_PROBLEMS), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        if not path.is_file():
            return "missing"
    except OSError:  # ENAMETOOLONG: a name longer than the file system allows names no file
        return "name too long"
    try:
        with Image.open(path) as image:  # parses the header only: cheap enough for every image
            mode = image.mode
    except Image.DecompressionBombError:  # PIL refuses more than 2 x MAX_IMAGE_PIXELS pixels
        return "too large"
    except (UnidentifiedImageError, OSError):
        return "unreadable"
    return "float" if mode == "F" else None


def _described(problem: str) -> tuple[str, str]:
    """What images with `problem` have, and what to do about it."""
    from PIL import Image

    return {
        "missing": ("are missing", "fix the paths or remove those rows"),
        "name too long": (
            "have a name longer than the file system allows (255 bytes a folder or file name)",
            "fix the paths or remove those rows",
        ),
        "unreadable": ("are unreadable", "fix the paths or remove those rows"),
        "too large": (
            f"have more pixels than PIL decodes ({2 * (Image.MAX_IMAGE_PIXELS or 0):,})",
            "downscale them (wsml resizes every image to --img-size anyway)",
        ),
        "float": ("have 32-bit float pixels (mode F)", "convert them to 8- or 16-bit images"),
    }[problem]
