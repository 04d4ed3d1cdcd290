"""Thresholds against a brute-force search, and the F1 family against scikit-learn, on small partial-label arrays."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import partial_labels
from sklearn.metrics import precision_recall_fscore_support

from wsml_fast.core.errors import WsmlError
from wsml_fast.model.decisions import (
    F1Family,
    ThresholdRule,
    counts_at,
    counts_top,
    fit_negative_thresholds,
    fit_thresholds,
)
from wsml_fast.model.metrics import APAccumulator, LabelledEntries


def entries_of(scores: np.ndarray, labels: np.ndarray, top_k: int = 0, batch: int = 7):
    accumulator = APAccumulator(top_k)
    for start in range(0, len(scores), batch):
        accumulator.add(scores[start : start + batch], labels[start : start + batch])
    return accumulator.entries()


def class_columns(scores: np.ndarray, labels: np.ndarray):
    """Per class: its index, and the truth and scores of its labelled entries."""
    for c in range(labels.shape[1]):
        known = labels[:, c] >= 0
        yield c, labels[known, c] == 1, scores[known, c]


def brute_force(scores: np.ndarray, labels: np.ndarray, rule: ThresholdRule) -> tuple[np.ndarray, list, list]:
    """Try every distinct labelled score of each class as its threshold."""
    thresholds, without, unreachable = np.full(labels.shape[1], 0.5), [], []
    for c, truth, score in class_columns(scores, labels):
        if not truth.any():
            without.append(c)
            continue
        candidates = sorted(set(score.tolist()), reverse=True)
        f1 = [2 * (truth & (score >= t)).sum() / ((score >= t).sum() + truth.sum()) for t in candidates]
        best = candidates[int(np.argmax(f1))]  # argmax: the first, the highest threshold among equals
        thresholds[c] = best
        if rule.kind == "precision":
            reaching = [t for t in candidates if (truth & (score >= t)).sum() / (score >= t).sum() >= rule.value]
            if reaching:
                thresholds[c] = reaching[-1]
            else:
                unreachable.append(c)
    return thresholds, without, unreachable


@pytest.mark.parametrize("rule", ["f1", "precision:0.6", "precision:0.9", "precision:1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_equal_a_brute_force_search(rule: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = partial_labels(rng, 60, 8)
    scores[:, 5] = rng.random(60)  # a class without ties
    fitted = fit_thresholds(entries_of(scores, labels), ThresholdRule.parse(rule))
    expected, without, unreachable = brute_force(scores, labels, ThresholdRule.parse(rule))
    np.testing.assert_allclose(fitted.values, expected)
    assert fitted.without_positive == without == [0, 2]
    assert fitted.unreachable == unreachable
    if rule == "precision:1":
        assert unreachable, "a class should fail to reach precision 1 on noisy scores"


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_entries_fit_as_the_same_entries_repeated(seed: int) -> None:
    """An entry of weight w counts as w copies of it (`wsml complete` weighs valid's entries as train leaves them
    unobserved): thresholds, counts and classes named equal those fitted on the entries repeated."""
    rng = np.random.default_rng(seed)
    scores, labels = partial_labels(rng, 60, 8)
    entries = entries_of(scores, labels)
    weights = rng.integers(1, 4, len(entries.classes))
    weighted = LabelledEntries(entries.n_classes, entries.classes, entries.scores, entries.positive, weights=weights)
    repeated = entries.take(np.repeat(np.arange(len(weights)), weights))
    for rule in ("f1", "precision:0.8"):
        fitted, expected = (fit_thresholds(e, ThresholdRule.parse(rule)) for e in (weighted, repeated))
        np.testing.assert_allclose(fitted.values, expected.values)
        np.testing.assert_allclose(fitted.counts.tp, expected.counts.tp)
        assert (fitted.without_positive, fitted.unreachable) == (expected.without_positive, expected.unreachable)
    np.testing.assert_allclose(
        fit_negative_thresholds(weighted, 0.8).values, fit_negative_thresholds(repeated, 0.8).values
    )


def brute_force_negatives(scores: np.ndarray, labels: np.ndarray, target: float) -> tuple[np.ndarray, list, list]:
    """Per class, the highest distinct labelled score t whose labelled entries below t are a share `target` negative."""
    thresholds, without, unreachable = np.zeros(labels.shape[1]), [], []
    for c, truth, score in class_columns(scores, labels):
        if not truth.any():
            without.append(c)
            continue
        reaching = [
            t for t in sorted(set(score.tolist())) if (score < t).any() and (~truth[score < t]).mean() >= target
        ]
        if reaching:
            thresholds[c] = reaching[-1]
        else:
            unreachable.append(c)
    return thresholds, without, unreachable


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_negative_thresholds_equal_a_brute_force_search(target: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = partial_labels(rng, 60, 8)
    scores[:, 5] = rng.random(60)  # a class without ties
    labels[:, 6] = np.where(labels[:, 6] >= 0, scores[:, 6] > 0.45, -1)  # separable: NPV 1 up to its positives
    fitted = fit_negative_thresholds(entries_of(scores, labels), target)
    expected, without, unreachable = brute_force_negatives(scores, labels, target)
    np.testing.assert_allclose(fitted.values, expected)
    assert fitted.without_positive == without == [0, 2]
    assert fitted.unreachable == unreachable
    if target == 1.0:
        assert unreachable, "a class should fail to reach NPV 1 on noisy scores"
        assert fitted.values[6] == scores[labels[:, 6] == 1, 6].min()  # separable: up to its lowest positive


def test_a_fixed_rule_gives_every_class_its_value_and_no_notes() -> None:
    scores, labels = partial_labels(np.random.default_rng(3), 40, 4)
    fitted = fit_thresholds(entries_of(scores, labels), ThresholdRule.parse("fixed:0.3"))
    assert fitted.values.tolist() == [0.3] * 4 and fitted.notes(list("abcd")) == []


def test_notes_name_the_classes_left_at_one_half() -> None:
    scores, labels = partial_labels(np.random.default_rng(0), 40, 4)
    notes = fit_thresholds(entries_of(scores, labels), ThresholdRule("f1")).notes(["w", "x", "y", "z"])
    assert notes == ["note: 2 classes (w, y) without a labelled valid positive keep threshold 0.5"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("precision:1.5", "--thresholds precision:1.5: precision's value must be a number above 0 and at most 1"),
        ("precision:0", "--thresholds precision:0: precision's value must be a number above 0 and at most 1"),
        ("fixed:x", "--thresholds fixed:x: fixed's value must be a number from 0 to 1"),
        ("best", "--thresholds 'best': not one of f1, precision:P, fixed:T (for example precision:0.9)"),
        ("f1:2", "--thresholds 'f1:2': not one of f1, precision:P, fixed:T (for example precision:0.9)"),
    ],
)
def test_a_wrong_rule_is_one_line(text: str, message: str) -> None:
    with pytest.raises(WsmlError) as error:
        ThresholdRule.parse(text)
    assert str(error.value) == message


def sklearn_family(truth_of, predicted_of, n_classes: int) -> dict[str, float]:
    """CP/CR/CF1 from sklearn's per-class binary scores over classes with positives; OP/OR/OF1 micro."""
    per_class = [
        precision_recall_fscore_support(truth_of(c), predicted_of(c), average="binary", zero_division=0)[:2]
        for c in range(n_classes)
        if truth_of(c).any()
    ]
    cp, cr = (100 * np.mean([p[i] for p in per_class]) for i in (0, 1))
    truth = np.concatenate([truth_of(c) for c in range(n_classes)])
    predicted = np.concatenate([predicted_of(c) for c in range(n_classes)])
    op, orr, of1, _ = precision_recall_fscore_support(truth, predicted, average="binary", zero_division=0)
    return {"cp": cp, "cr": cr, "cf1": 2 * cp * cr / (cp + cr), "op": 100 * op, "or": 100 * orr, "of1": 100 * of1}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_f1_family_equals_scikit_learn_on_masked_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = partial_labels(rng, 50, 6)
    thresholds = rng.uniform(0.2, 0.8, 6)
    entries = entries_of(scores, labels, top_k=3)

    def truth_of(c):
        return labels[labels[:, c] >= 0, c] == 1

    at = F1Family.of(counts_at(entries, thresholds)).to_dict()
    expected = sklearn_family(truth_of, lambda c: scores[labels[:, c] >= 0, c] >= thresholds[c], 6)
    assert at == pytest.approx(expected)

    scores = rng.random(scores.shape)  # top-k breaks ties as torch.topk does: none here
    entries = entries_of(scores, labels, top_k=3)
    ranks = np.argsort(np.argsort(-scores, axis=1), axis=1)  # 0 = the image's highest
    top = F1Family.of(counts_top(entries)).to_dict()
    assert top == pytest.approx(sklearn_family(truth_of, lambda c: ranks[labels[:, c] >= 0, c] < 3, 6))


def test_a_split_without_positives_has_no_f1_family() -> None:
    entries = entries_of(np.full((4, 2), 0.7), np.zeros((4, 2)))
    assert all(np.isnan(v) for v in F1Family.of(counts_at(entries, np.full(2, 0.5))).to_dict().values())


def test_thresholds_csv_has_a_row_per_class_with_its_valid_figures() -> None:
    scores = np.array([[0.9, 0.2], [0.8, 0.6], [0.3, 0.4]])
    labels = np.array([[1, 0], [0, 1], [1, -1]], dtype=float)
    fitted = fit_thresholds(entries_of(scores, labels), ThresholdRule("f1"))
    lines = fitted.csv_text(["cat", "dog"]).splitlines()
    assert lines[0] == "class,threshold,precision,recall,f1,positives"
    # cat: at 0.3 all three are called positive (F1 0.8), the best; dog: at 0.6, one right call (F1 1)
    assert lines[1:] == ["cat,0.300000,0.666667,1.000000,0.800000,2", "dog,0.600000,1.000000,1.000000,1.000000,1"]
