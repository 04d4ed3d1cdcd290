"""The per-class rows of a finished run: test AP (results.json), the threshold and its valid precision, recall,
F1 and positives (thresholds.csv), and the observed positives the model trained on; the table's cut at many
classes, and the best and worst classes by test AP."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TABLE_LIMIT = 500  # classes in the page's table; the rest stay in thresholds.csv and `wsml eval --json`
EXTREMES = 10  # classes in each of the best and worst lists


@dataclass(frozen=True)
class ClassRow:
    name: str
    ap: float | None  # test AP, percent (None: no test split, or no test positive)
    threshold: float | None
    precision: float | None  # at the threshold on valid, percent
    recall: float | None
    f1: float | None
    valid_positives: int | None
    train_positives: int | None  # observed positives in train (None: the data was not found)


def class_rows(
    classes: list[str], results: dict, thresholds: list[dict[str, str]] | None, train_positives: np.ndarray | None
) -> list[ClassRow]:
    """One row per class, in the run's class order."""
    test = results.get("test_per_class") or {}
    fitted = {row["class"]: row for row in thresholds or []}
    rows = []
    for c, name in enumerate(classes):
        row = fitted.get(name, {})
        rows.append(
            ClassRow(
                name,
                test.get(name),
                _value(row.get("threshold")),
                _percent(row.get("precision")),
                _percent(row.get("recall")),
                _percent(row.get("f1")),
                int(row["positives"]) if row.get("positives") else None,
                None if train_positives is None else int(train_positives[c]),
            )
        )
    return rows


def _value(text: str | None) -> float | None:
    value = float(text) if text not in (None, "") else math.nan
    return value if math.isfinite(value) else None


def _percent(text: str | None) -> float | None:
    value = _value(text)
    return None if value is None else 100 * value


def table_cut(rows: list[ClassRow], limit: int = TABLE_LIMIT) -> list[ClassRow]:
    """The rows the page's table shows: all of them up to `limit`, else the `limit` classes with the most valid
    positives (then the most observed train positives; ties in class order), in the run's class order."""
    if len(rows) <= limit:
        return rows
    order = sorted(range(len(rows)), key=lambda i: (-(rows[i].valid_positives or 0), -(rows[i].train_positives or 0)))
    return [rows[i] for i in sorted(order[:limit])]


def best_and_worst(rows: list[ClassRow], count: int = EXTREMES) -> tuple[list[ClassRow], list[ClassRow]]:
    """The `count` classes of highest test AP (best first) and of lowest (worst first), among those with an AP;
    with fewer than 2 x `count` such classes, each list takes its half."""
    scored = sorted((row for row in rows if row.ap is not None), key=lambda row: (-row.ap, row.name))
    count = min(count, len(scored) // 2 + len(scored) % 2)
    return scored[:count], scored[::-1][: min(count, len(scored) - count)]
