"""`wsml complete`: additions exactly where the fitted thresholds allow (against probabilities and thresholds
computed here another way), observed entries kept, the folder a dataset wsml reads and trains on, the truth's
measure, refusals, no half-written folder, and memory that follows the entries added, not images x classes."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY, error_of, invoke

import wsml_fast
import wsml_fast.inference.complete as complete_module
from wsml_fast.data.labels import write_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.observation import unobserved_weights
from wsml_fast.data.sources import from_folder
from wsml_fast.data.table import load_table
from wsml_fast.inference.complete import Cuts, Targets, fit_cuts, held_out_precision, select_additions, write_completed
from wsml_fast.model.decisions import ThresholdRule, fit_negative_thresholds, fit_thresholds
from wsml_fast.model.metrics import LabelledEntries

PRECISION, NPV = 0.5, 0.95  # the tiny run reaches the one for some classes and not for others


def probabilities(model, demo_folder: Path, split: str, frame: pd.DataFrame) -> np.ndarray:
    """The model's probabilities of a split's images, through `load_model` (not the command's scoring)."""
    return model.probabilities([demo_folder / "images" / name for name in frame.image[frame.split == split]])


def expected_additions(
    trained_run: Path, demo_folder: Path, negatives: bool
) -> tuple[dict[tuple[str, str], int], list[str]]:
    """(image, class) -> value of what completing train should add, thresholds fitted here on valid's truth, each
    positive weighted by the chance that an image of train's observation leaves it unobserved; and the classes that
    cannot reach the target precision."""
    model = wsml_fast.load_model(trained_run)
    observed, truth = pd.read_csv(demo_folder / "observed.csv"), pd.read_csv(demo_folder / "truth.csv")
    valid = truth[model.classes][truth.split == "valid"].to_numpy() == 1
    shown = (observed[model.classes][observed.split == "train"].to_numpy() == 1).sum(axis=1)
    present = valid.sum(axis=1)
    kept = 1 - np.minimum(shown[None, :], present[:, None]).mean(axis=1) / present  # each positive's weight
    weights = np.where(valid, kept[:, None], 1.0)  # the demo observes no negatives
    scores = probabilities(model, demo_folder, "valid", truth)
    entries = LabelledEntries(
        10, np.tile(np.arange(10), len(valid)), scores.ravel(), valid.ravel(), None, weights.ravel()
    )
    fitted = fit_thresholds(entries, ThresholdRule("precision", PRECISION))
    positive = np.where(np.isin(np.arange(10), fitted.unreachable + fitted.without_positive), np.inf, fitted.values)
    negative = np.minimum(fit_negative_thresholds(entries, NPV).values, positive) if negatives else np.zeros(10)
    train = observed[observed.split == "train"]
    scores, unobserved = probabilities(model, demo_folder, "train", observed), train[model.classes].isna().to_numpy()
    expected = {}
    for value, chosen in ((1, scores >= positive), (0, scores < negative)):
        for i, c in zip(*np.nonzero(chosen & unobserved), strict=True):
            expected.setdefault((train.image.iloc[i], model.classes[c]), value)
    return expected, [model.classes[c] for c in fitted.unreachable]


@pytest.mark.parametrize("negatives", [False, True])
def test_complete_adds_exactly_the_unobserved_entries_its_thresholds_allow(
    trained_run: Path, demo_folder: Path, tmp_path: Path, negatives: bool
) -> None:
    out = tmp_path / "completed"
    options = ["--negatives", NPV] if negatives else []
    result = invoke("complete", trained_run, "--target-precision", PRECISION, *options, "--out", out)
    assert result.exit_code == 0, result.output
    expected, unreachable = expected_additions(trained_run, demo_folder, negatives)
    assert 1 in expected.values() and (0 in expected.values()) == negatives and unreachable
    added = pd.read_csv(out / "added.csv")
    assert dict(zip(zip(added.image, added["class"], strict=True), added.value, strict=True)) == expected
    model = wsml_fast.load_model(trained_run)
    scores = model.probabilities([demo_folder / "images" / name for name in added.image])
    columns = [model.classes.index(name) for name in added["class"]]
    np.testing.assert_allclose(added.probability, scores[np.arange(len(added)), columns], atol=1e-5)
    notes, summary = result.output.splitlines()[:-1], result.output.splitlines()[-1]
    named = f"{len(unreachable)} classes ({', '.join(unreachable)}) cannot reach valid precision 0.5 at any threshold"
    assert f"note: {named}: they add no positives" in notes
    kinds = f"{(added.value == 1).sum()} positives" + (
        f" and {(added.value == 0).sum()} negatives" if negatives else ""
    )
    assert summary.startswith(f"train: added {kinds} to 48 images | ") and summary.endswith(f"| wrote {out}")


def test_the_folder_keeps_every_observed_entry_and_is_a_dataset_wsml_trains_on(
    trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "completed"
    assert invoke("complete", trained_run, "--target-precision", PRECISION, "--out", out).exit_code == 0
    before, after = load_table(from_folder(demo_folder)), load_table(from_folder(out))
    assert after.images == before.images and (after.splits == before.splits).all() and after.classes == before.classes
    assert os.readlink(out / "images") == str((demo_folder / "images").resolve())
    assert after.truth is not None and after.truth.digest() == before.truth.digest()
    rows, classes = before.observed.rows_and_cols()
    np.testing.assert_array_equal(after.observed.lookup(rows, classes), before.observed.values)  # none changed
    added = pd.read_csv(out / "added.csv")
    new = np.isin(after.observed.keys, before.observed.keys, invert=True)
    new_rows, new_classes = np.divmod(after.observed.keys[new], len(after.classes))
    listed = {(after.images[r], after.classes[c]) for r, c in zip(new_rows, new_classes, strict=True)}
    assert listed == set(zip(added.image, added["class"], strict=True)) and (after.observed.values[new] == 1).all()
    assert set(after.splits[new_rows]) == {"train"}
    trained = invoke("train", "--data", out, *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.output


def test_with_a_truth_the_summary_measures_the_additions(trained_run: Path, demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "completed"
    result = invoke("complete", trained_run, "--target-precision", PRECISION, "--negatives", NPV, "--out", out)
    added = pd.read_csv(out / "added.csv")
    observed, truth = (pd.read_csv(demo_folder / name).set_index("image") for name in ("observed.csv", "truth.csv"))
    train = observed.index[observed.split == "train"]
    right = np.array([truth.at[image, name] for image, name in zip(added.image, added["class"], strict=True)])
    unobserved = observed.loc[train, truth.columns[1:]].isna().to_numpy()
    true = truth.loc[train, truth.columns[1:]].to_numpy() == 1
    figures = []
    for value, missing in ((1, unobserved & true), (0, unobserved & ~true)):
        hits = (right[added.value == value] == value).sum()
        figures.append(f"precision {hits / (added.value == value).sum():.3f} recall {hits / missing.sum():.3f}")
    assert f"| measured on truth.csv: positives {figures[0]}, negatives {figures[1]} |" in result.output


def test_unobserved_weights_are_the_share_of_each_label_an_observation_like_train_leaves() -> None:
    """Per valid image, the mean over train images of min(shown, present) is what such an image would show."""
    rng = np.random.default_rng(0)
    train = np.where(rng.random((30, 6)) < 0.3, 1, np.where(rng.random((30, 6)) < 0.2, 0, -1))
    truth = (rng.random((12, 6)) < 0.4).astype(int)
    truth[0] = 0
    positive, negative = unobserved_weights(LabelStore.from_dense(train), LabelStore.from_dense(truth, fill=0))
    for value, weights in ((1, positive), (0, negative)):
        present, shown = (truth == value).sum(axis=1), (train == value).sum(axis=1)
        hidden = np.minimum(shown[None, :], present[:, None]).mean(axis=1)
        some = present > 0  # a row without labels of the kind has no entry to weigh
        np.testing.assert_allclose(weights[some], 1 - hidden[some] / present[some])
    single = LabelStore.from_dense(np.where(np.eye(6)[rng.integers(0, 6, 30)] == 1, 1, -1))  # one positive an image
    positive, negative = unobserved_weights(single, LabelStore.from_dense(truth, fill=0))
    np.testing.assert_allclose(positive[1:], 1 - 1 / truth[1:].sum(axis=1))
    np.testing.assert_allclose(negative, 1.0)  # nothing observed negative: every negative stays unobserved


def test_the_held_out_estimate_of_halves_alike_is_the_fitted_precision() -> None:
    """Two identical halves: each half's thresholds on the other decide what they decide where fitted."""
    rng = np.random.default_rng(1)
    classes, scores = rng.integers(0, 4, 200), rng.random(200)
    positive = rng.random(200) < scores
    weights = rng.random(200)
    entries = LabelledEntries(
        4, np.tile(classes, 2), np.tile(scores, 2), np.tile(positive, 2), None, np.tile(weights, 2)
    )
    halves = np.repeat([0, 1], 200)
    cuts = fit_cuts(entries, Targets(0.7), [f"c{c}" for c in range(4)], halves)
    assert np.isfinite(cuts.positive).any() and 0.7 <= cuts.precision < 1
    assert cuts.held_out == pytest.approx(cuts.precision)
    assert held_out_precision(entries, (np.arange(400) % 2), 0.7) < 1


def test_a_held_out_estimate_short_of_the_target_is_said() -> None:
    """Scores that say nothing: each half's chance thresholds decide the other half near its base rate."""
    rng = np.random.default_rng(2)
    classes, scores, positive = rng.integers(0, 3, 600), rng.random(600), rng.random(600) < 0.5
    positive[scores >= 0.99] = True  # the top few of every class: on a half, 0.9 is reached by chance
    entries = LabelledEntries(3, classes, scores, positive, None, np.ones(600))
    cuts = fit_cuts(entries, Targets(0.9), ["a", "b", "c"], np.arange(600) % 2)
    assert cuts.precision >= 0.9 and cuts.held_out < 0.7
    assert f"note: held out on valid, these thresholds reach precision {cuts.held_out:.3f}, short of the 0.9 asked" in (
        " ".join(cuts.notes)
    )
    fitted_alike = fit_cuts(entries, Targets(0.9), ["a", "b", "c"], None)
    assert not any("held out" in note for note in fitted_alike.notes)  # no halves: no estimate, no note


@pytest.mark.parametrize(
    "options, message",
    [
        (["--target-precision", "1.5"], "--target-precision 1.5: must be above 0 and at most 1 (a share, such as 0.9)"),
        (["--target-precision", "0"], "--target-precision 0: must be above 0 and at most 1 (a share, such as 0.9)"),
        (["--target-precision", "0.9", "--negatives", "2"], "--negatives 2: must be above 0 and at most 1"),
        (["--target-precision", "0.9", "--split", "all"], "--split 'all' is not one of: train, valid, test"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_is_written(
    trained_run: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    assert message in error_of("complete", trained_run, *options, "--out", tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_or_not_empty_is_refused(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "kept.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for name, what in (("full", "exists and is not empty"), ("file", "is a file")):
        line = error_of("complete", trained_run, "--target-precision", "0.9", "--out", tmp_path / name)
        assert line == f"error: --out {tmp_path / name}: {what}; name a new (or empty) folder"
    assert (tmp_path / "full" / "kept.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty folder is taken
    assert invoke("complete", trained_run, "--target-precision", "0.9", "--out", tmp_path / "empty").exit_code == 0
    assert (tmp_path / "empty" / "observed.csv").is_file()


def test_an_interrupted_write_leaves_no_folder(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(path: Path, *args, **kwargs) -> None:
        write_label_csv(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(complete_module, "write_label_csv", interrupted)
    invoke("complete", trained_run, "--target-precision", "0.9", "--out", tmp_path / "completed")
    assert list(tmp_path.iterdir()) == []


IMAGES, CLASSES, BATCH = 20_000, 5_000, 200  # 100 M entries: 400 MB as dense float32, 4 MB a batch
CUT = 2.0**-13  # exact in float32 as in float64: entries above 1 - CUT are added as positives, below CUT as negatives


def test_memory_follows_the_entries_added_not_images_times_classes(tmp_path: Path) -> None:
    """Reading the labels, selecting and writing a completion of 20,000 images x 5,000 classes (8 observed entries
    an image), scored by an injected scorer (seeded uniform probabilities, a batch at a time): the traced peak
    (reading the labels' names, about 20 MB, is the largest part) stays far below one dense matrix."""
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, IMAGES * CLASSES, 8 * IMAGES))
    observed = LabelStore(IMAGES, CLASSES, keys, (rng.random(len(keys)) < 0.8).astype(np.int8))
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    splits = np.where(np.arange(IMAGES) % 10 == 0, "valid", "train")
    names = [f"{i:05d}.png" for i in range(IMAGES)]
    write_label_csv(source / "observed.csv", names, splits, [f"c{c}" for c in range(CLASSES)], observed, compact=True)
    cuts = Cuts(np.full(CLASSES, 1 - CUT), np.full(CLASSES, CUT), float("nan"), None, [])

    def batches(rows: np.ndarray):
        for start in range(0, len(rows), BATCH):
            scores = np.random.default_rng(start).random((min(BATCH, len(rows) - start), CLASSES), dtype=np.float32)
            yield torch.arange(start, start + len(scores)), scores

    tracemalloc.start()
    try:
        table = load_table(from_folder(source))
        rows = table.rows("train")
        additions = select_additions(batches(rows), table.observed_of("train"), rows, cuts, torch.device("cpu"))
        write_completed(tmp_path / "completed", table, additions)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense = IMAGES * CLASSES * 4
    assert peak < dense / 10, f"traced peak {peak / 2**20:.1f} MiB against {dense / 2**20:.0f} MiB dense"
    expected = {1: 0, 0: 0}
    known = table.observed_of("train")
    for positions, scores in batches(rows):
        unobserved = known.take(positions.numpy()).to_dense() < 0
        expected[1] += int((unobserved & (scores >= 1 - CUT)).sum())
        expected[0] += int((unobserved & (scores < CUT)).sum())
    assert {1: additions.count(1), 0: additions.count(0)} == expected and expected[1] > 1000
    assert len(pd.read_csv(tmp_path / "completed" / "added.csv")) == len(additions.keys)
