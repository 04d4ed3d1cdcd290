"""From scores to decisions: per-class thresholds fitted on labelled entries, and the F1 family of metrics.

Both work on `LabelledEntries` (a split's labelled entries, flat), so unobserved entries are left out exactly as
for mAP and nothing holds images x classes.

Thresholds. A label is decided positive when its probability is at or above its class's threshold. Per class,
over the distinct scores of its labelled entries (each a candidate threshold), `f1` takes the one of highest F1
(the highest threshold among equals), `precision:P` the lowest whose precision reaches P (a class that cannot
reach P keeps its F1 threshold and is named), `fixed:T` is T for every class. A class without a labelled
positive keeps 0.5 and is named.

Negative thresholds (`wsml complete --negatives P`): a label is decided negative when its probability is below its
class's negative threshold. Per class, over the same candidates (the distinct scores of its labelled entries), the
highest t such that the labelled entries scored below t are at least a share P negative (their negative
predictive value, NPV; at least one entry below t): the mirror of `precision:P`, the most inclusive threshold that
reaches the target. A class that cannot reach P, or has no labelled positive (its NPV says nothing), gets 0:
nothing is below it.

The F1 family (ML-GCN's definitions, Chen et al. CVPR 2019, as ASL reports them): per class, TP, FP and FN are
counted over its labelled entries; CP and CR are the means over classes of TP / (TP + FP) and TP / (TP + FN), and
CF1 = 2 CP CR / (CP + CR), the harmonic mean of the two means (not the mean of per-class F1); OP, OR and OF1 are
the same from the counts summed over all classes. Classes without a labelled positive are left out of CP and CR
(their recall means nothing; their false positives still count in OP); a class that predicts nothing has
precision 0.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.model.metrics import LabelledEntries

RULES = ("f1", "precision:P", "fixed:T")
NO_POSITIVE_THRESHOLD = 0.5
NO_NEGATIVES = 0.0  # a negative threshold below which no probability lies


@dataclass(frozen=True)
class ThresholdRule:
    """How thresholds are fitted: `f1`, `precision` with its target, or `fixed` with its value."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str, option: str = "--thresholds") -> ThresholdRule:
        kind, _, value = text.strip().partition(":")
        if kind == "f1" and not value:
            return cls("f1")
        if kind in ("precision", "fixed") and value:
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            low_open = kind == "precision"
            if (0 < number <= 1) if low_open else (0 <= number <= 1):
                return cls(kind, number)
            bounds = "above 0 and at most 1" if low_open else "from 0 to 1"
            raise WsmlError(f"{option} {text}: {kind}'s value must be a number {bounds}")
        raise WsmlError(f"{option} {text!r}: not one of {', '.join(RULES)} (for example precision:0.9)")

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


@dataclass
class ClassCounts:
    """Per class, at some decision: true positives, false positives, labelled positives (arrays of C)."""

    tp: np.ndarray
    fp: np.ndarray
    positives: np.ndarray

    def precision(self) -> np.ndarray:
        predicted = self.tp + self.fp
        return np.divide(self.tp, predicted, out=np.zeros(len(self.tp)), where=predicted > 0)

    def recall(self) -> np.ndarray:
        return np.divide(self.tp, self.positives, out=np.zeros(len(self.tp)), where=self.positives > 0)

    def f1(self) -> np.ndarray:
        return _harmonic(self.precision(), self.recall())


@dataclass
class F1Family:
    """CP, CR, CF1, OP, OR, OF1 in percent (the module's docstring gives the definitions)."""

    cp: float
    cr: float
    cf1: float
    op: float
    or_: float
    of1: float

    @classmethod
    def of(cls, counts: ClassCounts) -> F1Family:
        scored = counts.positives > 0
        if not scored.any():
            return cls(*[float("nan")] * 6)
        cp, cr = counts.precision()[scored].mean(), counts.recall()[scored].mean()
        tp, fp, positives = (int(a.sum()) for a in (counts.tp, counts.fp, counts.positives))
        op = tp / (tp + fp) if tp + fp else 0.0
        orr = tp / positives
        return cls(*(100 * float(v) for v in (cp, cr, _harmonic(cp, cr), op, orr, _harmonic(op, orr))))

    def to_dict(self) -> dict[str, float]:
        return {"cp": self.cp, "cr": self.cr, "cf1": self.cf1, "op": self.op, "or": self.or_, "of1": self.of1}

    def line(self) -> str:
        return " ".join(f"{k.upper()} {v:.2f}" for k, v in self.to_dict().items())


def _harmonic(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.divide(2 * a * b, a + b, out=np.zeros(np.broadcast(a, b).shape), where=(a + b) > 0)


def counts_at(entries: LabelledEntries, thresholds: np.ndarray) -> ClassCounts:
    """Per-class counts when each entry is decided positive at or above its class's threshold."""
    decided = entries.scores >= np.asarray(thresholds, dtype=np.float64)[entries.classes]
    return _counts(entries, decided)


def counts_top(entries: LabelledEntries) -> ClassCounts:
    """Per-class counts when each image's top-k classes are its decided labels (the accumulator's `top_k`)."""
    if entries.top is None:
        raise ValueError("these entries were kept without top-k flags (APAccumulator(top_k=...))")
    return _counts(entries, entries.top)


def _counts(entries: LabelledEntries, decided: np.ndarray) -> ClassCounts:
    return ClassCounts(
        entries.count(decided & entries.positive), entries.count(decided & ~entries.positive), entries.positives()
    )


@dataclass
class FittedThresholds:
    """Per-class thresholds with their counts on the entries they were fitted on, and the classes that could
    not be fitted as asked."""

    rule: ThresholdRule
    values: np.ndarray  # (C,)
    counts: ClassCounts
    without_positive: list[int] = field(default_factory=list)  # kept NO_POSITIVE_THRESHOLD
    unreachable: list[int] = field(default_factory=list)  # precision:P not reached: their F1 threshold

    def notes(self, classes: list[str]) -> list[str]:
        """One line per kind of class that was not fitted as asked (none when all were)."""
        lines = []
        if self.without_positive:
            lines.append(
                f"note: {named_classes(classes, self.without_positive)} without a labelled valid positive keep "
                f"threshold {NO_POSITIVE_THRESHOLD}"
            )
        if self.unreachable:
            lines.append(
                f"note: {named_classes(classes, self.unreachable)} cannot reach valid precision {self.rule.value:g} at "
                "any threshold; they keep their F1 threshold"
            )
        return lines

    def csv_text(self, classes: list[str]) -> str:
        """thresholds.csv: class, threshold, and the valid precision, recall, F1 and positives at it."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["class", "threshold", "precision", "recall", "f1", "positives"])
        precision, recall, f1 = self.counts.precision(), self.counts.recall(), self.counts.f1()
        for c, name in enumerate(classes):
            row = (self.values[c], precision[c], recall[c], f1[c])
            writer.writerow([name, *(f"{v:.6f}" for v in row), int(self.counts.positives[c])])
        return text.getvalue()


def named_classes(classes: list[str], indices: list[int], shown: int = 10) -> str:
    """`3 classes (a, b, c)`: a count with the first `shown` names, for one-line notes."""
    names = ", ".join(classes[i] for i in indices[:shown])
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return f"{len(indices)} class{'es' if len(indices) != 1 else ''} ({names}{more})"


def fit_thresholds(entries: LabelledEntries, rule: ThresholdRule) -> FittedThresholds:
    """Each class's threshold by `rule` on `entries` (the module's docstring gives the rules)."""
    n = entries.n_classes
    positives = entries.positives()
    without = positives == 0
    if rule.kind == "fixed":
        values = np.full(n, rule.value)
        return FittedThresholds(rule, values, counts_at(entries, values))
    curve = _threshold_curve(entries)
    values = np.full(n, NO_POSITIVE_THRESHOLD)
    best_f1 = _first_per_class(curve, curve.f1 == _segment_max(curve, curve.f1), n, last=False)
    unreachable = np.zeros(n, bool)
    chosen = best_f1
    if rule.kind == "precision":
        chosen = _first_per_class(curve, curve.precision >= rule.value, n, last=True)
        unreachable = (chosen < 0) & ~without
        chosen = np.where(unreachable, best_f1, chosen)
    fitted = ~without & (chosen >= 0)
    values[fitted] = curve.scores[chosen[fitted]]
    return FittedThresholds(
        rule,
        values,
        counts_at(entries, values),
        np.flatnonzero(without).tolist(),
        np.flatnonzero(unreachable).tolist(),
    )


@dataclass
class NegativeThresholds:
    """Per class, the threshold below which a label is decided negative (the module's docstring gives the rule);
    `NO_NEGATIVES` for the classes named."""

    values: np.ndarray  # (C,)
    without_positive: list[int] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)


def fit_negative_thresholds(entries: LabelledEntries, target: float) -> NegativeThresholds:
    """Each class's negative threshold for negative predictive value `target` on `entries`."""
    n = entries.n_classes
    without = entries.positives() == 0
    curve = _threshold_curve(entries)
    npv = np.divide(curve.negatives_below, curve.below, out=np.zeros(len(curve.below)), where=curve.below > 0)
    reaching = (curve.below > 0) & (npv >= target)
    chosen = _first_per_class(curve, reaching, n, last=False)  # scores descend: the first is the highest
    unreachable = (chosen < 0) & ~without
    fitted = ~without & (chosen >= 0)
    values = np.full(n, NO_NEGATIVES)
    values[fitted] = curve.scores[chosen[fitted]]
    return NegativeThresholds(values, np.flatnonzero(without).tolist(), np.flatnonzero(unreachable).tolist())


@dataclass
class _Curve:
    """Every (class, distinct score) as a candidate threshold, classes contiguous and scores descending within
    each: the precision and F1 of deciding that class's entries at or above the score positive, and the entries
    below the score (negative thresholds)."""

    owner: np.ndarray
    scores: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    below: np.ndarray  # labelled entries scored below the candidate
    negatives_below: np.ndarray  # the negatives among them
    starts: np.ndarray  # where each class present in the curve begins


def _threshold_curve(entries: LabelledEntries) -> _Curve:
    order = np.lexsort((-entries.scores, entries.classes))
    classes, scores = entries.classes[order].astype(np.int64), entries.scores[order]
    weights = np.ones(len(order)) if entries.weights is None else entries.weights[order].astype(np.float64)
    hits, seen = np.cumsum(weights * entries.positive[order]), np.cumsum(weights)
    ends = np.flatnonzero(np.append((classes[1:] != classes[:-1]) | (scores[1:] != scores[:-1]), True))
    owner = classes[ends]
    labelled = entries.count(np.ones(len(order), bool))
    positives = entries.positives()
    before = np.cumsum(labelled) - labelled
    tp = hits[ends] - (np.cumsum(positives) - positives)[owner]
    predicted = seen[ends] - before[owner]
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    f1 = np.divide(2 * tp, predicted + positives[owner], out=np.zeros(len(tp)), where=positives[owner] > 0)
    below = labelled[owner] - predicted
    negatives_below = below - (positives[owner] - tp)
    starts = np.flatnonzero(np.append(True, owner[1:] != owner[:-1])) if len(owner) else np.zeros(0, np.int64)
    return _Curve(owner, scores[ends], precision, f1, below, negatives_below, starts)


def _segment_max(curve: _Curve, values: np.ndarray) -> np.ndarray:
    """Each curve point's class maximum of `values`."""
    if not len(values):
        return values
    maxima = np.maximum.reduceat(values, curve.starts)
    return np.repeat(maxima, np.diff(np.append(curve.starts, len(values))))


def _first_per_class(curve: _Curve, chosen: np.ndarray, n_classes: int, last: bool) -> np.ndarray:
    """Per class, the index in the curve of its first (highest threshold) or last (lowest) chosen point; -1
    where none is chosen."""
    index = np.flatnonzero(chosen)
    if last:
        found = np.full(n_classes, -1)
        np.maximum.at(found, curve.owner[index], index)
        return found
    found = np.full(n_classes, len(chosen))
    np.minimum.at(found, curve.owner[index], index)
    return np.where(found == len(chosen), -1, found)
