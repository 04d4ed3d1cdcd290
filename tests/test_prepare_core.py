"""Shared prepare steps: split rule, observed-label simulation, image checks, output writing."""

from __future__ import annotations

import numpy as np
import pytest

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import read_label_csv, write_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.splits import split_train_valid
from wsml_fast.prepare import prepare_dataset
from wsml_fast.prepare.images import missing_images
from wsml_fast.prepare.observe import ObservedSpec, parse_observed, simulate_observed
from wsml_fast.prepare.source import positives_per_row, stack_rows, take_rows

TRUTH = np.array(
    [
        [1, 0, 1, 1, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 0, 1, 1],
    ],
    dtype=np.float32,
)


def test_split_of_ten_matches_reference_indices():
    # RandomState(1200).permutation(10) is [9 4 6 1 8 5 2 0 7 3]; the last round(0.2 * 10) = 2 go to valid.
    train, valid = split_train_valid(10, 1200)
    assert train.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    assert valid.tolist() == [3, 7]


def test_split_with_no_valid_rows():
    train, valid = split_train_valid(2, 1200)
    assert sorted(train.tolist()) == [0, 1] and valid.tolist() == []


def _reference_by_hand(truth: np.ndarray, n_pos: int, n_neg: int, seed: int) -> np.ndarray:
    """The reference's loop written out: per row, shuffle positives then negatives, keep the first few."""
    rs = np.random.RandomState(seed)
    expected = np.full(truth.shape, -1.0, dtype=np.float32)
    for i in range(truth.shape[0]):
        pos = np.nonzero(truth[i] == 1)[0]
        rs.shuffle(pos)
        expected[i, pos[:n_pos]] = 1
        neg = np.nonzero(truth[i] == 0)[0]
        rs.shuffle(neg)
        expected[i, neg[:n_neg]] = 0
    return expected


def test_reference_single_positive_matches_hand_run():
    observed = simulate_observed(TRUTH, ObservedSpec(), 1200, "reference")
    np.testing.assert_array_equal(observed, _reference_by_hand(TRUTH, 1, 0, 1200))
    assert observed[2].tolist() == [-1] * 5  # no positive: nothing observed


def test_reference_shuffles_negatives_even_when_none_are_kept():
    # Row 0 has 2 positives and 3 negatives. If the negative shuffle were skipped, row 3's choice would
    # come from a different point of the random stream; check against the literal sequence of draws.
    truth = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=np.float32)
    rs = np.random.RandomState(7)
    first = np.array([0, 1])
    rs.shuffle(first)
    rs.shuffle(np.array([2, 3, 4]))
    second = np.array([0, 1, 2, 3])
    rs.shuffle(second)
    observed = simulate_observed(truth, ObservedSpec(), 7, "reference")
    assert np.flatnonzero(observed[0] == 1).tolist() == [first[0]]
    assert np.flatnonzero(observed[1] == 1).tolist() == [second[0]]


def test_reference_counts_spec():
    observed = simulate_observed(TRUTH, parse_observed("pos:2,neg:1"), 3, "reference")
    np.testing.assert_array_equal(observed, _reference_by_hand(TRUTH, 2, 1, 3))


@pytest.mark.parametrize("protocol", ["wsml", "reference"])
def test_counts_per_row(protocol):
    observed = simulate_observed(TRUTH, parse_observed("pos:2,neg:1"), 5, protocol)
    assert ((observed == 1).sum(axis=1)).tolist() == [2, 1, 0, 2]
    assert ((observed == 0).sum(axis=1)).tolist() == [1, 1, 1, 1]
    seen = observed >= 0
    np.testing.assert_array_equal(observed[seen], TRUTH[seen])


def test_wsml_single_positive_is_seeded():
    first = simulate_observed(TRUTH, parse_observed("single-positive"), 11, "wsml")
    assert ((first == 1).sum(axis=1)).tolist() == [1, 1, 0, 1]
    assert not (first == 0).any()
    np.testing.assert_array_equal(first, simulate_observed(TRUTH, ObservedSpec(), 11, "wsml"))


def test_fraction_keeps_cells_with_probability():
    truth = np.random.RandomState(0).randint(0, 2, size=(200, 50)).astype(np.float32)
    observed = simulate_observed(truth, parse_observed("fraction:0.3"), 1, "wsml")
    seen = observed >= 0
    assert 0.25 < seen.mean() < 0.35
    np.testing.assert_array_equal(observed[seen], truth[seen])
    assert (simulate_observed(truth, parse_observed("fraction:1"), 1, "wsml") == truth).all()


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("single-positive", ObservedSpec(1, 0)),
        ("pos:3,neg:2", ObservedSpec(3, 2)),
        ("neg:4, pos:0", ObservedSpec(0, 4)),
        ("pos:2", ObservedSpec(2, 0)),
        ("fraction:0.5", ObservedSpec(fraction=0.5)),
        ("single-positive:size", ObservedSpec(salient="size")),
        ("Single-Positive: Location", ObservedSpec(salient="location")),
    ],
)
def test_parse_observed(spec, parsed):
    assert parse_observed(spec) == parsed
    assert parse_observed(parsed.text()) == parsed  # the recorded form reads back as the same spec


@pytest.mark.parametrize(
    "spec",
    ["", "single", "pos:-1", "pos:1.5", "pos:x", "fraction:0", "fraction:2", "k:1", "single-positive:", "size"],
)
def test_parse_observed_rejects(spec):
    with pytest.raises(WsmlError, match=r"--observed .* use single-positive, single-positive:size, .* fraction:P"):
        parse_observed(spec)


def test_missing_images_by_listing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "top.jpg").write_bytes(b"")
    images = ["a/x.jpg", "a/y.jpg", "top.jpg", "b/z.jpg"]
    assert missing_images(images, {"": tmp_path}).tolist() == [False, True, False, True]
    assert missing_images(images, {"a": tmp_path / "a"}).tolist() == [False, True, True, True]


def test_sparse_rows_and_compact_round_trip(tmp_path):
    one = LabelStore.from_entries(2, 3, np.array([0, 1, 1]), np.array([2, 0, 1]), np.array([1, 1, 0]), -1)
    two = LabelStore.from_entries(1, 3, np.array([0]), np.array([1]), np.array([0]), -1)
    both = stack_rows([one, two])
    expected = np.array([[-1, -1, 1], [1, 0, -1], [-1, 0, -1]], dtype=np.float32)
    np.testing.assert_array_equal(both.to_dense(), expected)
    np.testing.assert_array_equal(take_rows(both, np.array([2, 0])).to_dense(), expected[[2, 0]])
    assert positives_per_row(both).tolist() == [1, 1, 0]
    path = tmp_path / "observed.csv"
    write_label_csv(path, ["p", "q", "r"], ["train", "valid", "test"], ["A", "B", "C"], both, compact=True)
    assert path.read_text().splitlines() == [
        "image,split,positives,negatives",
        "p,train,C,",
        "q,valid,A,B",
        "r,test,,B",
    ]
    back = read_label_csv(path)
    assert back.classes == ["A", "B", "C"] and back.images == ["p", "q", "r"]
    np.testing.assert_array_equal(back.store.to_dense(), expected)


def _csv_dataset(tmp_path, rows: int = 5):
    (tmp_path / "img").mkdir()
    lines = ["image,cat,dog"]
    for i in range(rows):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(b"")
        lines.append(f"{i}.jpg,{i % 2},1")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "labels.csv"


def test_unknown_format_lists_known(tmp_path):
    with pytest.raises(WsmlError, match="unknown dataset format 'imagenet'; known formats: voc, coco, nuswide"):
        prepare_dataset("imagenet", tmp_path, tmp_path / "out", log=lambda _: None)


def test_bad_protocol_and_existing_output(tmp_path):
    path = _csv_dataset(tmp_path)
    with pytest.raises(WsmlError, match="--protocol 'paper' is not known; use one of wsml, reference"):
        prepare_dataset("csv", path, tmp_path / "out", protocol="paper", log=lambda _: None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "observed.csv").write_text("x")
    with pytest.raises(WsmlError, match="already holds observed.csv"):
        prepare_dataset("csv", path, tmp_path / "out", log=lambda _: None)


def test_missing_images_fail_or_drop(tmp_path):
    path = _csv_dataset(tmp_path)
    (tmp_path / "img" / "3.jpg").unlink()
    with pytest.raises(WsmlError, match=r"1 of 5 listed images not found \(first: 3.jpg; .*--allow-missing"):
        prepare_dataset("csv", path, tmp_path / "out", image_root=tmp_path / "img", log=lambda _: None)
    messages = []
    summary = prepare_dataset(
        "csv", path, tmp_path / "out", image_root=tmp_path / "img", allow_missing=True, log=messages.append
    )
    # 5 rows: permutation(5) is [4 2 0 1 3], so row 3 would be valid; it is missing and dropped.
    assert summary.images == {"train": 4, "valid": 0, "test": 0}
    assert summary.missing == 1
    assert any("dropped 1 images" in m for m in messages)
    assert read_label_csv(tmp_path / "out" / "observed.csv").images == ["0.jpg", "1.jpg", "2.jpg", "4.jpg"]


def test_copy_images(tmp_path):
    path = _csv_dataset(tmp_path, rows=2)
    prepare_dataset("csv", path, tmp_path / "out", image_root=tmp_path / "img", copy_images=True, log=lambda _: None)
    images = tmp_path / "out" / "images"
    assert not images.is_symlink() and sorted(p.name for p in images.iterdir()) == ["0.jpg", "1.jpg"]
