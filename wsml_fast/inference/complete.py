"""`wsml complete`: a split's labels completed by a trained model, written as a new dataset folder.

The additions come from the split's unobserved entries, so the thresholds are fitted on the valid split's labelled
entries (the truth where truth.csv gives it) weighted as the split's observation would leave them unobserved
(`data/observation.py`: where each training image shows one positive, each positive of a valid image with n counts
1 - 1/n). Per class, the threshold of the target precision is fitted on those weighted entries as `--thresholds
precision:P` fits it on plain ones; with a negative target, also the threshold below which they reach that negative
predictive value (`fit_negative_thresholds`). A class that cannot reach a target, or has no labelled valid positive
left, adds nothing of that kind. The precision a threshold reaches where it was fitted is optimistic (the lowest
threshold that reaches the target on a few hundred images often reaches it by chance), so the estimate reported is
held out: valid is cut in two halves, each half's thresholds are applied to the other, and the precision of what
they decide there is pooled.

Then every image of the split is scored a batch at a time: an unobserved entry at or above its class's threshold is
added as a positive, one below its negative threshold as a negative (a positive first, should the two overlap);
observed entries stay as they are. Only the additions leave the device (13 bytes each), so memory follows the labels
the dataset has and the entries added, never images x classes.

The folder is built beside its place and renamed into it at the end, so an interrupted completion leaves no
half-written dataset (at worst a hidden `.NAME.*.tmp` folder after a kill).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.growing import GrowingColumns
from wsml_fast.core.process import Process, launched
from wsml_fast.data.labels import write_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset, make_loader, split_dataset
from wsml_fast.data.observation import unobserved_weights
from wsml_fast.data.sources import OBSERVED, TRUTH, DatasetFiles
from wsml_fast.data.table import PartialLabelTable, check_images
from wsml_fast.inference.evaluate import model_table, scoring_of
from wsml_fast.inference.trained import TrainedModel
from wsml_fast.model.decisions import (
    NO_NEGATIVES,
    FittedThresholds,
    ThresholdRule,
    fit_negative_thresholds,
    fit_thresholds,
    named_classes,
)
from wsml_fast.model.evaluation import Scoring
from wsml_fast.model.metrics import LabelledEntries
from wsml_fast.model.scoring import scored_batches

ADDED = "added.csv"
HALVES_SEED = 0  # the draw of valid's halves for the held-out estimate


@dataclass(frozen=True)
class Targets:
    """What the additions must reach on valid: a precision, and optionally a negative predictive value."""

    precision: float
    npv: float | None = None

    def __post_init__(self) -> None:
        for option, value in (("--target-precision", self.precision), ("--negatives", self.npv)):
            if value is not None and not 0 < value <= 1:
                raise WsmlError(f"{option} {value:g}: must be above 0 and at most 1 (a share, such as 0.9)")


def check_out(out: Path) -> None:
    """The folder to write must be new or empty: a completion never mixes with other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WsmlError(f"--out {out}: is a file; name a new (or empty) folder")
    if out.is_dir() and any(out.iterdir()):
        raise WsmlError(f"--out {out}: exists and is not empty; name a new (or empty) folder")


@dataclass
class Cuts:
    """Per class: an unobserved entry at or above `positive` is added as positive (inf: never), one below
    `negative` as negative (0: never); with what they reach on valid and the classes that add nothing."""

    positive: np.ndarray
    negative: np.ndarray
    precision: float  # of the weighted valid entries at or above their class's `positive` (nan: none is)
    npv: float | None  # of the weighted valid entries below their class's `negative` (None without a negative target)
    notes: list[str]
    held_out: float = float("nan")  # precision of each valid half's thresholds on the other half, pooled


def _positive_cuts(entries: LabelledEntries, precision: float) -> tuple[np.ndarray, FittedThresholds]:
    fitted = fit_thresholds(entries, ThresholdRule("precision", precision))
    positive = fitted.values.copy()
    positive[fitted.without_positive + fitted.unreachable] = np.inf
    return positive, fitted


def fit_cuts(entries: LabelledEntries, targets: Targets, classes: list[str], halves: np.ndarray | None = None) -> Cuts:
    """The thresholds of `targets` fitted on the valid split's labelled (and weighted) entries; with `halves` (0 or
    1 per entry, by image), also the held-out estimate of their precision."""
    positive, fitted = _positive_cuts(entries, targets.precision)
    notes = []
    if fitted.without_positive:
        notes.append(
            f"note: {named_classes(classes, fitted.without_positive)} without a labelled valid positive that could "
            "be unobserved add nothing"
        )
    if fitted.unreachable:
        notes.append(
            f"note: {named_classes(classes, fitted.unreachable)} cannot reach valid precision {targets.precision:g} "
            "at any threshold: they add no positives"
        )
    negative, npv = np.full(len(classes), NO_NEGATIVES), None
    if targets.npv is not None:
        negatives = fit_negative_thresholds(entries, targets.npv)
        negative = np.minimum(negatives.values, positive)
        npv = _weighted_share(entries.take(entries.scores < negative[entries.classes]), False)
        if negatives.unreachable:
            notes.append(
                f"note: {named_classes(classes, negatives.unreachable)} cannot reach valid negative predictive value "
                f"{targets.npv:g} at any threshold: they add no negatives"
            )
    precision = _weighted_share(entries.take(entries.scores >= positive[entries.classes]), True)
    held_out = float("nan") if halves is None else held_out_precision(entries, halves, targets.precision)
    if held_out < targets.precision:
        notes.append(
            f"note: held out on valid, these thresholds reach precision {held_out:.3f}, short of the "
            f"{targets.precision:g} asked: expect the additions nearer {held_out:.3f} (a stronger model, or more "
            "valid images, fits them closer)"
        )
    return Cuts(positive, negative, precision, npv, notes, held_out)


def held_out_precision(entries: LabelledEntries, halves: np.ndarray, precision: float) -> float:
    """The precision of the entries each half's thresholds decide positive in the other half, both halves pooled
    (weighted as the entries are): what the fitted thresholds can be expected to reach on entries they did not see,
    slightly pessimistic (each is fitted on half the images)."""
    right = decided = 0.0
    for half in (0, 1):
        positive, _ = _positive_cuts(entries.take(halves != half), precision)
        other = entries.take(halves == half)
        chosen = other.scores >= positive[other.classes]
        right += float(other.count(chosen & other.positive).sum())
        decided += float(other.count(chosen).sum())
    return right / decided if decided else float("nan")


def _weighted_share(entries: LabelledEntries, value: bool) -> float:
    """The (weighted) share of `entries` whose label is `value`."""
    total = float(entries.count(np.ones(len(entries.classes), bool)).sum())
    return float(entries.count(entries.positive == value).sum()) / total if total else float("nan")


def _share(values: np.ndarray, value: bool) -> float:
    return float(np.mean(values == value)) if len(values) else float("nan")


@dataclass
class Additions:
    """The entries added, in table order: flat keys (row x classes + class, as a LabelStore keys them), values
    (1 or 0) and the probabilities that decided them."""

    keys: np.ndarray
    values: np.ndarray
    probabilities: np.ndarray

    def count(self, value: int) -> int:
        return int((self.values == value).sum())


def select_additions(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    observed: LabelStore,
    rows: np.ndarray,
    cuts: Cuts,
    device: torch.device,
) -> Additions:
    """The unobserved entries that `cuts` add, from `batches` of (positions in the split, probabilities B x C) in
    any order; `observed` holds the split's labels (its row i is table row `rows[i]`). Each batch is compared on
    `device`; only the entries past a threshold are looked up among the observed ones, and only the additions kept."""
    known = observed.to(device)
    positive, negative = (
        torch.as_tensor(c, dtype=torch.float32, device=device) for c in (cuts.positive, cuts.negative)
    )
    any_negative = bool((cuts.negative > NO_NEGATIVES).any())
    table_rows = torch.as_tensor(rows, dtype=torch.int64, device=device)
    kept = GrowingColumns([np.int64, np.int8, np.float32])  # key, value, probability
    for positions, scores in batches:
        positions, scores = torch.as_tensor(positions, device=device), torch.as_tensor(scores, device=device)
        past = scores >= positive
        if any_negative:
            past |= scores < negative
        image, cls = torch.nonzero(past, as_tuple=True)
        unobserved = known.lookup(positions[image], cls) < 0
        image, cls = image[unobserved], cls[unobserved]
        probability = scores[image, cls].float()
        keys = table_rows[positions[image]] * observed.n_classes + cls
        values = (probability >= positive[cls]).to(torch.int8)
        kept.add(*(column.cpu().numpy() for column in (keys, values, probability)))
    keys, values, probabilities = kept.arrays()
    order = np.argsort(keys, kind="stable")  # already sorted when the batches come in split order
    return Additions(keys[order], values[order], probabilities[order])


@dataclass
class Measured:
    """The additions against the split's truth: per kind, the share that is right (precision) and the share of the
    split's unobserved entries of that truth that was added (recall)."""

    positives: tuple[float, float]
    negatives: tuple[float, float] | None


def measure(table: PartialLabelTable, split: str, additions: Additions) -> Measured | None:
    """Against truth.csv, when there is one; counted from the additions and the listed labels alone."""
    if table.truth is None:
        return None
    n_classes, rows = len(table.classes), table.rows(split)
    true = table.truth.lookup(*np.divmod(additions.keys, n_classes)) == 1
    added = additions.values == 1
    truth, observed = table.truth.take(rows), table.observed_of(split)
    true_rows, true_classes = truth.entries(1)
    unobserved_positives = int((observed.lookup(true_rows, true_classes) < 0).sum())
    observed_negatives = int((truth.lookup(*observed.rows_and_cols()) == 0).sum())  # truly negative, observed
    unobserved_negatives = len(rows) * n_classes - len(true_rows) - observed_negatives
    positives = (_share(true[added], True), _ratio(int(true[added].sum()), unobserved_positives))
    if not (~added).any():
        return Measured(positives, None)
    right = int((~true[~added]).sum())
    return Measured(positives, (_share(true[~added], False), _ratio(right, unobserved_negatives)))


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def _with_additions(observed: LabelStore, additions: Additions) -> LabelStore:
    """`observed` with the additions inserted in key order (they are unobserved entries: no key is listed twice)."""
    at = np.searchsorted(observed.keys, additions.keys)
    keys, values = np.insert(observed.keys, at, additions.keys), np.insert(observed.values, at, additions.values)
    return LabelStore(observed.n_rows, observed.n_classes, keys, values, observed.fill)


def write_completed(out: Path, table: PartialLabelTable, additions: Additions) -> None:
    """The dataset folder: observed.csv (compact, every row with its split as the model's training split them) and
    classes.txt, added.csv, `images` linked to the source's image root, and the source's truth.csv linked.
    Built in a hidden folder beside `out`, then renamed into place (onto an empty folder too)."""
    out = Path(out).expanduser().absolute()
    building = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        building.mkdir(parents=True)
        store = _with_additions(table.observed, additions)
        write_label_csv(building / OBSERVED, table.images, table.splits, table.classes, store, compact=True)
        rows, classes = np.divmod(additions.keys, len(table.classes))
        added = {
            "image": np.asarray(table.images, dtype=object)[rows],
            "class": np.asarray(table.classes, dtype=object)[classes],
            "value": additions.values,
            "probability": additions.probabilities,
        }
        pd.DataFrame(added).to_csv(building / ADDED, index=False, float_format="%.6f")
        (building / "images").symlink_to(table.source.images_root.resolve(), target_is_directory=True)
        if table.source.truth_csv is not None:
            (building / TRUTH).symlink_to(table.source.truth_csv.resolve())
        os.replace(building, out)
    except OSError as exc:
        raise WsmlError(f"--out {out}: cannot be written ({exc.strerror or exc.__class__.__name__})") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)


@dataclass
class Completion:
    """What `complete` did: its thresholds, additions and, with a truth, how right they are."""

    split: str
    classes: list[str]
    images: int
    cuts: Cuts
    additions: Additions
    measured: Measured | None
    out: Path

    def notes(self) -> list[str]:
        return self.cuts.notes

    def summary(self) -> str:
        """One line: the additions per kind, the classes that added none, the valid estimate, the truth's measure."""
        kinds = f"{self.additions.count(1):,} positives"
        if self.cuts.npv is not None:
            kinds += f" and {self.additions.count(0):,} negatives"
        added = np.bincount(self.additions.keys % len(self.classes), minlength=len(self.classes))
        idle = np.flatnonzero(added == 0).tolist()
        parts = [
            f"{self.split}: added {kinds} to {self.images:,} images",
            f"{named_classes(self.classes, idle, 3)} added none" if idle else "every class added some",
            f"estimated on valid's entries weighted as {self.split} leaves them unobserved: precision "
            f"{_figure(self.cuts.held_out)} held out ({_figure(self.cuts.precision)} where fitted)"
            + (f", negative predictive value {_figure(self.cuts.npv)}" if self.cuts.npv is not None else ""),
        ]
        if self.measured is not None:
            pairs = [("positives", self.measured.positives), ("negatives", self.measured.negatives)]
            figures = [f"{kind} {_figures(pair)}" for kind, pair in pairs if pair is not None]
            parts.append(f"measured on {TRUTH}: {', '.join(figures)}")
        return " | ".join([*parts, f"wrote {self.out}"])


def _figure(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def _figures(precision_recall: tuple[float, float]) -> str:
    return f"precision {_figure(precision_recall[0])} recall {_figure(precision_recall[1])}"


def _split_batches(
    network: torch.nn.Module, table: PartialLabelTable, split: str, size: int, scoring: Scoring
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(positions in the split, probabilities B x C on the scoring device) of every image of `split`."""
    images = [table.images[i] for i in table.rows(split)]
    dataset = ImageLabelDataset(table.source.images_root, images, table.observed_of(split), size)
    loader = make_loader(dataset, scoring.bs, False, scoring.workers, scoring.device)
    return ((rest[-1], scores) for scores, rest in scored_batches(network, loader, scoring.precision, scoring.device))


def unobserved_like_entries(
    network: torch.nn.Module, table: PartialLabelTable, split: str, size: int, scoring: Scoring
) -> tuple[LabelledEntries, np.ndarray]:
    """The valid split's labelled entries, scored as every split is (`Scoring.score`) and weighted as `split`'s
    observation would leave them unobserved (`unobserved_weights`); and each entry's half of valid (0 or 1, drawn
    per image with a fixed seed) for the held-out estimate. The scoring keeps the entries in row order, row by row,
    so each entry's valid row follows from the labelled entries per row."""
    dataset = split_dataset(table, "valid", size)
    entries = scoring.score(network, dataset).entries()
    labels = dataset.labels
    rows = np.repeat(np.arange(len(dataset)), labels.count(1, axis=1) + labels.count(0, axis=1))
    positive_weights, negative_weights = unobserved_weights(table.observed_of(split), labels)
    entries.weights = np.where(entries.positive, positive_weights[rows], negative_weights[rows])
    halves = np.random.default_rng(HALVES_SEED).integers(2, size=len(dataset))[rows]
    return entries, halves


def complete(
    model: TrainedModel,
    source: DatasetFiles,
    split: str,
    targets: Targets,
    out: Path,
    process: Process | None = None,
) -> Completion:
    """Complete `split` of `source` with `model` to `targets` and write the dataset folder `out` (new or empty),
    scored on `process`'s device at its precision (by default: this process as launched)."""
    check_out(out)
    process = process or launched()
    table = model_table(model, source, split)
    valid = table.rows("valid")
    if not len(valid):
        raise WsmlError(f"{source.observed_csv}: no valid rows to fit the thresholds on; add valid rows")
    if split != "valid":
        check_images(source.images_root, [table.images[i] for i in valid], source.observed_csv)
    network, scoring = model.classifier(process.device), scoring_of(model, process)
    entries, halves = unobserved_like_entries(network, table, split, model.img_size, scoring)
    cuts = fit_cuts(entries, targets, table.classes, halves)
    batches = _split_batches(network, table, split, model.img_size, scoring)
    additions = select_additions(batches, table.observed_of(split), table.rows(split), cuts, process.device)
    measured = measure(table, split, additions)
    write_completed(out, table, additions)
    return Completion(split, table.classes, len(table.rows(split)), cuts, additions, measured, Path(out))
