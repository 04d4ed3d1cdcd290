"""Mean average precision over classes, in percent, with unlabelled entries left out per class.

Convention `skip` (default) leaves out, and reports, classes whose labelled entries have no positive or no
negative (their AP means nothing); `paper` scores a class without positives as AP 0 and keeps the rest, as
the reference papers' evaluation code does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score

CONVENTIONS = ("skip", "paper")


@dataclass
class MapResult:
    map: float  # percent; nan when no class could be scored
    per_class: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"map": self.map, "per_class": self.per_class, "skipped": self.skipped}


def mean_average_precision(
    scores: np.ndarray, labels: np.ndarray, classes: list[str] | None = None, convention: str = "skip"
) -> MapResult:
    """mAP of `scores` (N, C) against `labels` (N, C) holding 1, 0 or -1 (unlabelled, left out)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    classes = classes or [str(c) for c in range(labels.shape[1])]
    result = MapResult(map=float("nan"))
    for c, name in enumerate(classes):
        known = labels[:, c] >= 0
        truth = labels[known, c] > 0.5
        positives = int(truth.sum())
        if positives == 0 and convention == "paper":
            result.per_class[name] = 0.0
        elif positives == 0 or (positives == truth.size and convention == "skip"):
            result.skipped.append(name)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result.per_class[name] = 100.0 * float(average_precision_score(truth, scores[known, c]))
    if result.per_class:
        result.map = float(np.mean(list(result.per_class.values())))
    return result
