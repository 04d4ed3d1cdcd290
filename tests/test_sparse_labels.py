"""Label files read into and written from `LabelStore`s: the entries each form lists, chunked reading, the
file lines of errors across chunks, round trips, and memory that follows the entries, not images x classes."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import write

import wsml_fast.data.labels as labels
from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import align_truth, read_label_csv, write_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.prepare import prepare_dataset

U = -1.0
DENSE_BYTES = 20_000 * 9_600 * 4  # a float32 matrix of the large fixtures: 768 MB
LIMIT = 100 * 2**20  # the traced peak allowed for reading or writing them


@pytest.fixture(params=[1_000_000, 2], ids=["one chunk", "two rows a chunk"])
def chunk_cells(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Read every file whole, and again two records at a time (the header shares the first chunk)."""
    monkeypatch.setattr(labels, "CHUNK_CELLS", request.param)
    return request.param


def entries(store: LabelStore) -> list[tuple[int, int, int]]:
    rows, cols = store.rows_and_cols()
    return list(zip(rows.tolist(), cols.tolist(), store.values.tolist(), strict=True))


# ---------------------------------------------------------------- what each form lists


def test_wide_observed_lists_positives_and_negatives_over_unobserved(tmp_path: Path, chunk_cells: int) -> None:
    text = "image,split,cat,dog,bird\na.png,train,1,,0\n\nb.png,valid, 0 ,1.0,\n   \nc.png,test,,,\nd.png,train,0.0,1\n"
    table = read_label_csv(write(tmp_path / "observed.csv", text))
    assert table.store.fill == -1 and table.store.shape == (4, 3)
    assert entries(table.store) == [(0, 0, 1), (0, 2, 0), (1, 0, 0), (1, 1, 1), (3, 0, 0), (3, 1, 1)]
    assert table.images == ["a.png", "b.png", "c.png", "d.png"]
    assert table.splits.tolist() == ["train", "valid", "test", "train"]
    np.testing.assert_array_equal(table.store.to_dense(), [[1, U, 0], [0, 1, U], [U, U, U], [0, 1, U]])


def test_truth_lists_its_positives_over_zero(tmp_path: Path, chunk_cells: int) -> None:
    text = "image,cat,dog\na.png,1,0\n\nb.png,0,0\nc.png,1,1\n"
    table = read_label_csv(write(tmp_path / "truth.csv", text), complete=True)
    assert table.store.fill == 0 and table.splits is None
    assert entries(table.store) == [(0, 0, 1), (2, 0, 1), (2, 1, 1)]
    np.testing.assert_array_equal(table.store.to_dense(), [[1, 0], [0, 0], [1, 1]])


def test_compact_lists_with_negatives_spaces_repeats_and_blank_lines(tmp_path: Path, chunk_cells: int) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\n\nbird\nfish\n")
    text = (
        "image,split,positives,negatives\n"
        "a.png,train,bird| cat ,dog\n"
        "\n"
        "b.png, Train ,,\n"
        "c.png,valid,fish|fish||,cat|bird\n"
        "  \n"
        'd.png,test,"dog",\n'
    )
    table = read_label_csv(write(tmp_path / "observed.csv", text))
    assert table.classes == ["cat", "dog", "bird", "fish"]
    assert table.store.fill == -1
    assert entries(table.store) == [(0, 0, 1), (0, 1, 0), (0, 2, 1), (2, 0, 0), (2, 2, 0), (2, 3, 1), (3, 1, 1)]
    assert table.splits.tolist() == ["train", "train", "valid", "test"]
    np.testing.assert_array_equal(table.store.to_dense(), [[1, 0, 1, U], [U, U, U, U], [0, U, 0, 1], [U, 1, U, U]])


def test_header_only_files_have_no_rows(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\n")
    compact = read_label_csv(write(tmp_path / "observed.csv", "image,split,positives\n"))
    wide = read_label_csv(write(tmp_path / "wide.csv", "image,cat\n"))
    assert compact.store.shape == (0, 2) and wide.store.shape == (0, 1)
    assert compact.images == [] and compact.splits.tolist() == []


def test_truth_is_reordered_to_the_observed_rows_as_a_store(tmp_path: Path) -> None:
    observed = read_label_csv(write(tmp_path / "observed.csv", "image,cat,dog\na.png,1,\nb.png,,1\nc.png,,\n"))
    truth_text = "image,cat,dog\nc.png,0,1\nb.png,1,1\na.png,1,0\n"
    truth = align_truth(observed, read_label_csv(write(tmp_path / "truth.csv", truth_text), complete=True))
    assert truth.fill == 0
    assert entries(truth) == [(0, 0, 1), (1, 0, 1), (1, 1, 1), (2, 1, 1)]


# ---------------------------------------------------------------- errors name the file line in any chunk


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,split,cat\na.png,train,1\nb.png,train,0\n\nc.png,train,2\n", "line 5 (image c.png), column 'cat': '2'"),
        (
            "image,split,cat\na.png,train,1\nb.png,train,0\n\nc.png,valid,1\n\nd.png,Holdout,1\n",
            "line 7 (image d.png) has split 'holdout'",
        ),
        (
            "image,split,cat\na.png,train,1\nb.png,train,0\nc.png,train,1\n,train,1\n",
            "line 5 has an empty 'image' cell",
        ),
        ("image,cat\na.png,1\nb.png,0\n\nc.png,1\nb.png,1\n", "image 'b.png' appears on lines 3 and 6"),
        ("image,cat\na.png,1\nb.png,0\nc.png,1\nd.png,1,0\n", "line 5 has 3 cells but the header has 2"),
        # the earliest check wins wherever its row is: a repeated image before a bad cell, a bad split
        # before a bad cell, as when the file was read whole
        ("image,cat\na.png,1\nb.png,x\nc.png,1\na.png,1\n", "image 'a.png' appears on lines 2 and 5"),
        ("image,split,cat\na.png,train,x\nb.png,train,1\nc.png,later,1\n", "line 4 (image c.png) has split 'later'"),
    ],
)
def test_wide_errors_name_the_line_in_any_chunk(tmp_path: Path, chunk_cells: int, text: str, message: str) -> None:
    with pytest.raises(WsmlError) as error:
        read_label_csv(write(tmp_path / "observed.csv", text))
    assert message in str(error.value) and str(error.value).startswith(str(tmp_path / "observed.csv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a.png,train,cat,\nb.png,train,dog,\n\nc.png,train,cat|cow,\n",
            "line 5 (image c.png), column 'positives': class 'cow'",
        ),
        (
            "a.png,train,cat,\nb.png,train,dog,\nc.png,train,,dog|cow\n",
            "line 4 (image c.png), column 'negatives': class 'cow'",
        ),
        ("a.png,train,cat,\nb.png,train,dog,\nc.png,train,dog|cat,cat\n", "line 4 (image c.png) lists a class as both"),
        # an unknown positive is reported before an unknown negative or a clash on an earlier line
        (
            "a.png,train,,cow\nb.png,train,cat,cat\nc.png,train,hen,\n",
            "line 4 (image c.png), column 'positives': class 'hen'",
        ),
        (
            "a.png,train,cat,cat\nb.png,train,dog,\nc.png,train,,hen\n",
            "line 4 (image c.png), column 'negatives': class 'hen'",
        ),
    ],
)
def test_compact_errors_name_the_line_in_any_chunk(tmp_path: Path, chunk_cells: int, text: str, message: str) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\n")
    path = write(tmp_path / "observed.csv", "image,split,positives,negatives\n" + text)
    with pytest.raises(WsmlError, match="observed.csv") as error:
        read_label_csv(path)
    assert message in str(error.value)


# ---------------------------------------------------------------- writing


def test_compact_file_is_written_from_the_store(tmp_path: Path) -> None:
    store = LabelStore.from_entries(3, 3, np.array([0, 0, 2, 0]), np.array([2, 0, 1, 1]), np.array([1, 1, 1, 0]), -1)
    path = tmp_path / "out" / "observed.csv"
    write_label_csv(
        path, ["a.png", "b.png", "c.png"], ["train", "valid", "test"], ["x", "y, z", "w"], store, compact=True
    )
    assert path.read_text().splitlines() == [
        "image,split,positives,negatives",
        'a.png,train,x|w,"y, z"',
        "b.png,valid,,",
        'c.png,test,"y, z",',
    ]
    assert (tmp_path / "out" / "classes.txt").read_text() == "x\ny, z\nw\n"
    assert entries(read_label_csv(path).store) == entries(store)


def test_both_forms_round_trip_stores(tmp_path: Path) -> None:
    observed = LabelStore.from_dense(np.array([[1, U, 0], [U, U, U], [0, 1, 1]]))
    truth = LabelStore.from_dense(np.array([[1, 0, 0], [0, 0, 0], [0, 1, 1]]), fill=0)
    images, splits = ["a.png", "b.png", "c.png"], ["train", "valid", "test"]
    for compact in (False, True):
        path = tmp_path / str(compact) / "observed.csv"
        write_label_csv(path, images, splits, ["x", "y", "z"], observed, compact=compact)
        back = read_label_csv(path)
        assert entries(back.store) == entries(observed) and back.images == images
    write_label_csv(tmp_path / "truth.csv", images, splits, ["x", "y", "z"], truth)
    assert (tmp_path / "truth.csv").read_text().splitlines()[1:] == [
        "a.png,train,1,0,0",
        "b.png,valid,0,0,0",
        "c.png,test,0,1,1",
    ]
    assert entries(read_label_csv(tmp_path / "truth.csv", complete=True).store) == entries(truth)


@pytest.mark.parametrize("name", ["a|b", " cat", "dog ", "", "two\nlines"])
def test_compact_form_refuses_class_names_it_would_change(tmp_path: Path, name: str) -> None:
    store = LabelStore.from_dense(np.array([[1.0, U]]))
    with pytest.raises(WsmlError, match=r"cannot be written in the compact form"):
        write_label_csv(tmp_path / "observed.csv", ["a.png"], ["train"], ["ok", name], store, compact=True)


def test_stack_puts_rows_one_after_the_other() -> None:
    one = LabelStore.from_dense(np.array([[1, U], [U, 0]]))
    two = LabelStore.from_dense(np.array([[0, 1]]))
    both = LabelStore.stack([one, LabelStore.from_dense(np.zeros((0, 2))), two])
    np.testing.assert_array_equal(both.to_dense(), [[1, U], [U, 0], [0, 1]])
    with pytest.raises(ValueError, match="same classes and fill"):
        LabelStore.stack([one, LabelStore.from_dense(np.array([[1, 0]]), fill=0)])


# ---------------------------------------------------------------- memory follows the entries


def traced_peak(run: Callable[[], object]) -> tuple[object, int]:
    """What `run()` returns, and the peak of the memory traced while it ran."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_compact_file_reads_and_writes_without_a_dense_matrix(tmp_path: Path) -> None:
    """20,000 rows x 9,600 classes, 3 entries a row: a dense float32 matrix would take 768 MB."""
    write(tmp_path / "classes.txt", "".join(f"c{i}\n" for i in range(9_600)))
    lines = ["image,split,positives,negatives"]
    lines += [f"{i}.png,train,c{i * 7 % 9600}|c{(i * 13 + 1) % 9600},c{(i * 17 + 2) % 9600}" for i in range(20_000)]
    path = write(tmp_path / "observed.csv", "\n".join(lines) + "\n")
    table, peak = traced_peak(lambda: read_label_csv(path))
    assert peak < LIMIT < DENSE_BYTES
    assert table.store.shape == (20_000, 9_600) and len(table.store.keys) == 60_000
    rows = np.array([0, 123, 19_999])
    assert table.store.lookup(rows, np.array([0, 861, 19_999 * 7 % 9600])).tolist() == [1, 1, 1]
    assert table.store.lookup(rows, np.array([2, 2093, (19_999 * 17 + 2) % 9600])).tolist() == [0, 0, 0]
    assert table.store.lookup(rows, np.array([5, 5, 5])).tolist() == [-1, -1, -1]
    again = tmp_path / "again" / "observed.csv"
    _, peak = traced_peak(
        lambda: write_label_csv(again, table.images, table.splits, table.classes, table.store, compact=True)
    )
    assert peak < LIMIT
    back = read_label_csv(again).store
    assert np.array_equal(back.keys, table.store.keys) and np.array_equal(back.values, table.store.values)
    # row 1: c7 and c14 positive, c19 negative; row 1000: c7000 and c3401 positive (class order), c7402 negative
    assert again.read_text().splitlines()[2] == "1.png,train,c7|c14,c19"
    assert again.read_text().splitlines()[1001] == "1000.png,train,c3401|c7000,c7402"


def test_prepare_openimages_writes_the_compact_form_without_a_dense_matrix(tmp_path: Path) -> None:
    """20,000 images x 9,600 classes through every step of `wsml prepare openimages`."""
    root = tmp_path / "oi"
    (root / "train").mkdir(parents=True)
    write(root / "class-descriptions.csv", "".join(f"/m/{i},Class {i}\n" for i in range(9_600)))
    lines = ["ImageID,Source,LabelName,Confidence"]
    for i in range(20_000):
        (root / "train" / f"{i:05d}.jpg").touch()
        lines += [f"{i:05d},verification,/m/{i * 7 % 9600},1", f"{i:05d},verification,/m/{(i * 17 + 2) % 9600},0"]
    write(root / "train" / "train-annotations-human-imagelabels.csv", "\n".join(lines) + "\n")
    summary, peak = traced_peak(lambda: prepare_dataset("openimages", root, tmp_path / "out", log=lambda _: None))
    assert peak < LIMIT
    assert summary.images == {"train": 16_000, "valid": 4_000, "test": 0} and summary.classes == 9_600
    table = read_label_csv(tmp_path / "out" / "observed.csv")
    row = table.images.index("train/00123.jpg")
    assert table.store.lookup(np.array([row, row, row]), np.array([861, 2093, 5])).tolist() == [1, 0, -1]
    assert len(table.store.keys) == 40_000
