"""Mean average precision over classes, in percent, with unlabelled entries left out per class.

Convention `skip` (default) leaves out, and reports, classes whose labelled entries have no positive or no
negative (their AP means nothing); `paper` scores a class without positives as AP 0 and keeps the rest, as
the reference papers' evaluation code does.

Scores arrive a batch at a time and only the labelled entries are kept (class, score, label): with partial
labels at OpenImages scale (1.7 M images, 9,600 classes, a handful of labels each) nothing holds images x
classes. A full truth labels every entry, so it is kept whole, as any mAP over it must.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from fastai.learner import Metric

from wsml_fast.core.growing import GrowingColumns

CONVENTIONS = ("skip", "paper")


@dataclass
class MapResult:
    map: float  # percent; nan when no class could be scored
    per_class: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"map": self.map, "per_class": self.per_class, "skipped": self.skipped}


@dataclass
class LabelledEntries:
    """The labelled entries of a scored split, flat: each one's class, score and label, and (where asked for)
    whether the score is among its image's `top_k` highest. What mAP, thresholds and the F1 family are
    computed from: nothing images x classes."""

    n_classes: int
    classes: np.ndarray  # (E,) class index
    scores: np.ndarray  # (E,) probability
    positive: np.ndarray  # (E,) bool
    top: np.ndarray | None = None  # (E,) bool: among the image's top_k scores
    weights: np.ndarray | None = None  # (E,) how much each entry counts (None: 1 each); thresholds and counts

    def positives(self) -> np.ndarray:
        """Labelled positives per class (their weights summed, where weighted)."""
        return self.count(self.positive)

    def count(self, chosen: np.ndarray) -> np.ndarray:
        """Per class, the chosen entries (their weights summed, where weighted)."""
        weights = None if self.weights is None else self.weights[chosen]
        return np.bincount(self.classes[chosen], weights, minlength=self.n_classes)

    def take(self, chosen: np.ndarray) -> LabelledEntries:
        """The chosen entries (a mask or indices)."""
        top, weights = (None if a is None else a[chosen] for a in (self.top, self.weights))
        return LabelledEntries(
            self.n_classes, self.classes[chosen], self.scores[chosen], self.positive[chosen], top, weights
        )


class APAccumulator:
    """Per-class AP from batches of scores and labels (1, 0, -1 unlabelled), keeping the labelled entries only;
    with `top_k`, each kept entry also notes whether it is among its image's `top_k` highest scores."""

    def __init__(self, top_k: int = 0) -> None:
        self.n_classes: int | None = None
        self.top_k = top_k
        self._kept: GrowingColumns | None = None  # per labelled entry: class, score, positive[, top]

    def add(self, scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Keep the labelled entries of a batch: scores and labels (B, C)."""
        if scores.ndim != 2 or tuple(scores.shape) != tuple(labels.shape):
            raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)}: need two equal (B, C)")
        if self.n_classes not in (None, scores.shape[1]):
            raise ValueError(f"a batch of {scores.shape[1]} classes after batches of {self.n_classes}")
        self.n_classes = scores.shape[1]
        flat, kept, values = _labelled(scores, labels)
        if np.isnan(kept).any():
            raise ValueError("scores hold NaN: no AP can be computed")
        columns = [flat % self.n_classes, kept, values > 0.5]
        if self.top_k:
            columns.append(_in_top(scores, self.top_k).reshape(-1)[flat])
        if self._kept is None:
            class_dtype = np.uint16 if self.n_classes <= 2**16 else np.int32
            self._kept = GrowingColumns([class_dtype, kept.dtype, bool, bool][: len(columns)])
        self._kept.add(*columns)

    @property
    def n_entries(self) -> int:
        """Labelled entries kept so far."""
        return len(self._kept) if self._kept is not None else 0

    def entries(self) -> LabelledEntries:
        """Everything added, as one set of flat entries."""
        classes, scores, positive, *top = self._columns()
        return LabelledEntries(self.n_classes or 0, classes, scores, positive, top[0] if top else None)

    def result(self, classes: list[str] | None = None, convention: str = "skip") -> MapResult:
        """mAP and per-class AP of everything added, classes named `classes` (default: their numbers)."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        n_classes = len(classes) if classes is not None else self.n_classes or 0
        if self.n_classes not in (None, n_classes):
            raise ValueError(f"{n_classes} class names for batches of {self.n_classes} classes")
        classes = classes or [str(c) for c in range(n_classes)]
        ap, positives, labelled = _per_class_ap(*self._columns()[:3], n_classes)
        result = MapResult(map=float("nan"))
        for c, name in enumerate(classes):
            if positives[c] == 0 and convention == "paper":
                result.per_class[name] = 0.0
            elif positives[c] == 0 or (positives[c] == labelled[c] and convention == "skip"):
                result.skipped.append(name)
            else:
                result.per_class[name] = 100.0 * float(ap[c])
        if result.per_class:
            result.map = float(np.mean(list(result.per_class.values())))
        return result

    def shared(self) -> APAccumulator:
        """Every process's entries together (data-parallel evaluation scores a share of the images in each);
        itself when there is one process. AP does not depend on the entries' order."""
        from wsml_fast.core.distributed import all_gather_varying, in_group

        if not in_group():
            return self
        everyone = APAccumulator(self.top_k)
        everyone.n_classes = self.n_classes
        columns = self._columns()
        gathered = [all_gather_varying(torch.from_numpy(columns[0].astype(np.int32))).numpy()]
        gathered += [all_gather_varying(torch.from_numpy(column)).numpy() for column in columns[1:]]
        everyone._kept = GrowingColumns([column.dtype for column in columns])
        everyone._kept.add(*gathered)
        return everyone

    def _columns(self) -> list[np.ndarray]:
        """Class, score, positive (and top, with `top_k`) of every labelled entry kept."""
        if self._kept is None:  # the dtypes batches give
            empty = [np.zeros(0, np.uint16), np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, bool)]
            return empty[: 4 if self.top_k else 3]
        return self._kept.arrays()


def _in_top(scores: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """(B, C) bool on the host: whether each score is among its row's k highest (ties broken by position)."""
    scores = torch.as_tensor(scores)
    top = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    top.scatter_(1, scores.topk(min(k, scores.shape[1]), dim=1).indices, True)
    return top.cpu().numpy()


def _labelled(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions, scores and labels of the labelled entries (label >= 0), on the host. On the host, numpy
    filters (several times faster than torch on a CPU)."""
    device = next((a.device for a in (scores, labels) if torch.is_tensor(a) and a.device.type != "cpu"), None)
    if device is not None:
        return _labelled_tensors(torch.as_tensor(scores, device=device), torch.as_tensor(labels, device=device))
    scores, labels = (np.asarray(a.detach() if torch.is_tensor(a) else a).reshape(-1) for a in (scores, labels))
    flat = np.flatnonzero(labels >= 0)
    return flat, scores[flat], labels[flat]


def _labelled_tensors(scores: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_labelled` of tensors on one device, filtered there: only the labelled entries are copied to the host."""
    scores, labels = scores.detach().reshape(-1), labels.reshape(-1)
    flat = torch.nonzero(labels >= 0).squeeze(1)
    return flat.cpu().numpy(), scores[flat].cpu().numpy(), labels[flat].cpu().numpy()


def _per_class_ap(
    classes: np.ndarray, scores: np.ndarray, positive: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP (0 to 1) of every class, with its positives and labelled entries, from one sort by (class, -score).

    AP = sum over distinct thresholds of (gain in recall) x precision, tied scores forming one threshold: the
    rule of sklearn's `average_precision_score` (no interpolation). A class without positives gets nan.
    """
    labelled = np.bincount(classes, minlength=n_classes)
    positives = np.bincount(classes[positive], minlength=n_classes)
    if not len(classes):
        return np.full(n_classes, np.nan), positives, labelled
    order = np.argsort(-scores)  # the order within tied scores does not matter: they form one threshold
    order = order[np.argsort(classes[order], kind="stable")]  # a radix sort for uint16 classes
    classes, scores, hits = classes[order], scores[order], np.cumsum(positive[order])
    ends = np.flatnonzero(np.append((classes[1:] != classes[:-1]) | (scores[1:] != scores[:-1]), True))
    hits, owner = hits[ends], classes[ends]  # positives up to each threshold's last entry, and its class
    gain = np.diff(hits, prepend=0)  # the threshold's positives (thresholds split the sorted entries)
    entries_before, positives_before = np.cumsum(labelled) - labelled, np.cumsum(positives) - positives
    precision = (hits - positives_before[owner]) / (ends - entries_before[owner] + 1)
    summed = np.bincount(owner, weights=gain * precision, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return summed / positives, positives, labelled


def mean_average_precision(
    scores: np.ndarray, labels: np.ndarray, classes: list[str] | None = None, convention: str = "skip"
) -> MapResult:
    """mAP of `scores` (N, C) against `labels` (N, C) holding 1, 0 or -1 (unlabelled, left out)."""
    accumulator = APAccumulator()
    accumulator.add(np.asarray(scores, dtype=np.float64), np.asarray(labels))
    return accumulator.result(classes, convention)


class MapMetric(Metric):
    """fastai's validation mAP (column `valid_map`), accumulated batch by batch from the labelled entries alone:
    fastai's AccumMetric would gather every score and target of the epoch (N x C)."""

    name = "valid_map"

    def __init__(self, convention: str = "skip") -> None:
        self.convention = convention
        self.accumulator = APAccumulator()

    def reset(self) -> None:
        self.accumulator = APAccumulator()

    def accumulate(self, learn) -> None:
        self.add(torch.sigmoid(learn.pred.detach().float()), learn.yb[0])

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """A batch's probabilities and targets (1, 0, -1): how another pass over the valid split (the averaged
        weights', --ema) is scored the same way."""
        self.accumulator.add(scores, targets)

    @property
    def value(self) -> float:
        return self.accumulator.shared().result(convention=self.convention).map
