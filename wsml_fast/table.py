"""A dataset's labels in memory: observed and (optional) true labels, split per row, checked against the files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsml_fast.errors import WsmlError
from wsml_fast.labels import align_truth, outside_root_note, read_label_csv
from wsml_fast.sources import DataSource


@dataclass
class PartialLabelTable:
    """Rows are images; `observed` holds 1 / 0 / -1 (unobserved), `truth` (if known) holds 1 / 0."""

    source: DataSource
    images: list[str]
    splits: np.ndarray
    classes: list[str]
    observed: np.ndarray
    truth: np.ndarray | None
    notes: list[str] = field(default_factory=list)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def eval_labels(self, split: str) -> np.ndarray:
        """Labels to score `split` against: the full truth when known, else the observed entries only."""
        labels = self.truth if self.truth is not None else self.observed
        return labels[self.rows(split)]

    def train_truth(self) -> np.ndarray | None:
        """The full truth of the train rows, when there is a truth.csv."""
        return None if self.truth is None else self.truth[self.rows("train")]

    def expected_positives(self) -> float | None:
        """Mean positives per train image from the truth, when there is a truth."""
        return None if self.truth is None else float(self.truth[self.rows("train")].sum(1).mean())


def _hold_out_valid(splits: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    train = np.flatnonzero(splits == "train")
    n_valid = round(fraction * len(train))
    if n_valid < 1 or n_valid >= len(train):
        raise WsmlError(f"only {len(train)} train rows: too few to hold out a validation part; add valid rows")
    chosen = np.random.default_rng(seed).permutation(train)[:n_valid]
    splits = splits.copy()
    splits[chosen] = "valid"
    return splits


def _without_positives(observed: np.ndarray, train: np.ndarray, classes: list[str]) -> str | None:
    """A line naming the classes with no observed positive among the train rows, or None."""
    if not train.any():
        return None
    best = np.max(observed, axis=0, where=train[:, None], initial=-1.0)  # no copy of the train rows
    absent = np.flatnonzero(best < 1.0)
    if not absent.size:
        return None
    names = ", ".join(classes[i] for i in absent[:3])
    many = absent.size > 1
    return (
        f"{absent.size} class{'es' if many else ''} {'have' if many else 'has'} no observed positive in train "
        f"(first: {names}); {'they' if many else 'it'} can only be learned as negative{'s' if many else ''}"
    )


def load_table(
    source: DataSource, valid_fraction: float = 0.2, seed: int = 0, for_training: bool = True
) -> PartialLabelTable:
    """Read the label files of `source`, align the truth and settle the splits.

    Training needs train rows; evaluation data may hold any splits (the same hold-out is redone when it can be).
    """
    observed = read_label_csv(source.observed_csv)
    truth = None
    if source.truth_csv is not None:
        truth = align_truth(observed, read_label_csv(source.truth_csv, complete=True)).to_dense()  # transitional
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
    if (unseen := _without_positives(observed.matrix, splits == "train", observed.classes)) is not None:
        notes.append(unseen)
    if (outside := outside_root_note(observed.images, source.images_root)) is not None:
        notes.append(outside)
    return PartialLabelTable(source, observed.images, splits, observed.classes, observed.matrix, truth, notes)


def check_images(root: Path, images: list[str], csv: Path) -> None:
    """Every listed image must exist, have a readable header and be decodable, before any training starts."""
    from PIL import Image, UnidentifiedImageError

    problems: dict[str, list[str]] = {"missing": [], "unreadable": [], "too large": [], "float": []}
    for name in images:
        path = root / name
        if not path.is_file():
            problems["missing"].append(name)
            continue
        try:
            with Image.open(path) as image:  # parses the header only: cheap enough for every image
                mode = image.mode
        except Image.DecompressionBombError:  # PIL refuses more than 2 x MAX_IMAGE_PIXELS pixels
            problems["too large"].append(name)
        except (UnidentifiedImageError, OSError):
            problems["unreadable"].append(name)
        else:
            if mode == "F":
                problems["float"].append(name)
    says = {
        "missing": ("are missing", "fix the paths or remove those rows"),
        "unreadable": ("are unreadable", "fix the paths or remove those rows"),
        "too large": (
            f"have more pixels than PIL decodes ({2 * (Image.MAX_IMAGE_PIXELS or 0):,})",
            "downscale them (wsml resizes every image to --img-size anyway)",
        ),
        "float": ("have 32-bit float pixels (mode F)", "convert them to 8- or 16-bit images"),
    }
    for problem, names in problems.items():
        if names:
            what, advice = says[problem]
            first = ", ".join(names[:3])
            raise WsmlError(
                f"{csv}: {len(names)} of {len(images)} listed images {what} under {root} (first: {first}); {advice}"
            )
