"""A split scored once, reported whole: mAP, the F1 family at the model's thresholds, at 0.5 and for each
image's top 3, and per class AP, threshold, precision, recall and F1. Training's test pass, `wsml eval` and
threshold fitting (`wsml calibrate`, the end of training) all go through here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsml_fast.model.decisions import (
    F1Family,
    FittedThresholds,
    ThresholdRule,
    counts_at,
    counts_top,
    fit_thresholds,
)
from wsml_fast.model.metrics import APAccumulator, MapResult
from wsml_fast.model.scoring import score_split

TOP = 3  # the top-k variant of the F1 family: each image's 3 highest scores are its predictions


@dataclass(frozen=True)
class Scoring:
    """How a split is scored: the precision and device of the pass, its batch size and DataLoader workers."""

    precision: str
    device: torch.device
    bs: int
    workers: int

    def score(self, model: torch.nn.Module, dataset, top_k: int = 0) -> APAccumulator:
        return score_split(model, dataset, self.precision, self.device, self.bs, self.workers, top_k=top_k)


@dataclass
class SplitEvaluation:
    map: MapResult
    threshold_rule: str
    at_thresholds: F1Family
    at_half: F1Family
    top: F1Family
    per_class: dict[str, dict[str, float]]  # class -> ap (None where skipped), threshold, precision, recall, f1

    def f1_family(self) -> dict:
        """The F1 family's three variants and the thresholds' rule (results.json's `test_f1`)."""
        return {
            "threshold_rule": self.threshold_rule,
            "at_thresholds": self.at_thresholds.to_dict(),
            "at_0.5": self.at_half.to_dict(),
            f"top{TOP}": self.top.to_dict(),
        }

    def to_dict(self) -> dict:
        """`wsml eval --json`: the mAP keys, the F1 family, and per class."""
        return {**self.map.to_dict(), **self.f1_family(), "classes": self.per_class}

    def summary(self) -> list[str]:
        """The F1 family in three terminal lines."""
        return [
            f"at thresholds ({self.threshold_rule}): {self.at_thresholds.line()}",
            f"at 0.5: {self.at_half.line()}",
            f"top-{TOP}: {self.top.line()}",
        ]


def evaluate_split(
    model: torch.nn.Module,
    dataset,
    classes: list[str],
    thresholds: list[float],
    threshold_rule: str,
    convention: str,
    scoring: Scoring,
) -> SplitEvaluation:
    """Score `dataset` (its labelled entries alone) once and report it whole."""
    accumulator = scoring.score(model, dataset, top_k=TOP)
    entries = accumulator.entries()
    mean_ap = accumulator.result(classes, convention)
    values = np.asarray(thresholds, dtype=np.float64)
    counts = counts_at(entries, values)
    precision, recall, f1 = counts.precision(), counts.recall(), counts.f1()
    per_class = {
        name: {
            "ap": mean_ap.per_class.get(name),
            "threshold": float(values[c]),
            "precision": 100 * float(precision[c]),
            "recall": 100 * float(recall[c]),
            "f1": 100 * float(f1[c]),
            "positives": int(counts.positives[c]),
        }
        for c, name in enumerate(classes)
    }
    return SplitEvaluation(
        mean_ap,
        threshold_rule,
        F1Family.of(counts),
        F1Family.of(counts_at(entries, np.full(len(classes), 0.5))),
        F1Family.of(counts_top(entries)),
        per_class,
    )


def fit_split_thresholds(model: torch.nn.Module, dataset, rule: ThresholdRule, scoring: Scoring) -> FittedThresholds:
    """Per-class thresholds fitted by `rule` on the labelled entries of `dataset` (the valid split)."""
    return fit_thresholds(scoring.score(model, dataset).entries(), rule)
