from pathlib import Path

import numpy as np
import pytest
from helpers import write

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import align_truth, read_label_csv, write_label_csv

U = -1.0


def test_wide_form_keeps_unobserved_apart_from_negatives(tmp_path: Path) -> None:
    path = write(tmp_path / "observed.csv", "image,split,cat,dog\na.png,train,1,\nb.png,valid,0,1\nc.png,test,,\n")
    table = read_label_csv(path)
    assert table.images == ["a.png", "b.png", "c.png"]
    assert table.classes == ["cat", "dog"]
    assert list(table.splits) == ["train", "valid", "test"]
    np.testing.assert_array_equal(table.store.to_dense(), [[1, U], [0, 1], [U, U]])


def test_compact_form_reads_class_lists(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\nbird\n")
    path = write(
        tmp_path / "observed.csv", "image,split,positives,negatives\na.png,train,cat|bird,dog\nb.png,train,,\n"
    )
    table = read_label_csv(path)
    np.testing.assert_array_equal(table.store.to_dense(), [[1, 0, 1], [U, U, U]])


def test_write_then_read_round_trips_both_forms(tmp_path: Path) -> None:
    matrix = np.array([[1, U, 0], [U, 1, 1]], dtype=np.float32)
    for compact in (False, True):
        path = tmp_path / f"{compact}" / "observed.csv"
        write_label_csv(path, ["a.png", "b.png"], ["train", "test"], ["x", "y", "z"], matrix, compact=compact)
        np.testing.assert_array_equal(read_label_csv(path).store.to_dense(), matrix)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,split,cat\na.png,train,1\n", "no 'image' column"),
        ("image,split,cat\na.png,train,2\n", "line 2 (image a.png), column 'cat': '2' is not 1, 0 or empty"),
        ("image,split,cat\na.png,train,1\nb.png,train,0\na.png,test,1\n", "image 'a.png' appears on lines 2 and 4"),
        ("image,split,cat\na.png,holdout,1\n", "line 2 (image a.png) has split 'holdout'"),
        ("image,split\na.png,train\n", "no class columns"),
    ],
)
def test_bad_cells_and_columns_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "observed.csv", text)
    with pytest.raises(WsmlError, match="observed.csv") as error:
        read_label_csv(path)
    assert message in str(error.value)


def test_compact_unknown_class_is_named(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "cat\n")
    path = write(tmp_path / "observed.csv", "image,split,positives\na.png,train,cat\nb.png,train,cow\n")
    with pytest.raises(WsmlError, match="line 3 .*class 'cow' is not in classes.txt"):
        read_label_csv(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WsmlError, match="nothing.csv: file not found"):
        read_label_csv(tmp_path / "nothing.csv")


def test_truth_is_aligned_by_image_and_must_be_complete(tmp_path: Path) -> None:
    observed = read_label_csv(write(tmp_path / "observed.csv", "image,cat,dog\na.png,1,\nb.png,,1\n"))
    truth = read_label_csv(write(tmp_path / "truth.csv", "image,cat,dog\nb.png,1,1\na.png,1,0\n"), complete=True)
    np.testing.assert_array_equal(align_truth(observed, truth).to_dense(), [[1, 0], [1, 1]])
    with pytest.raises(WsmlError, match="is not 1 or 0"):
        read_label_csv(write(tmp_path / "t2.csv", "image,cat,dog\na.png,1,\n"), complete=True)


def test_truth_with_other_classes_or_images_is_refused(tmp_path: Path) -> None:
    observed = read_label_csv(write(tmp_path / "observed.csv", "image,cat,dog\na.png,1,\n"))
    other_classes = read_label_csv(write(tmp_path / "t1.csv", "image,cat,cow\na.png,1,0\n"), complete=True)
    with pytest.raises(WsmlError, match="class columns differ from observed.csv"):
        align_truth(observed, other_classes)
    other_images = read_label_csv(write(tmp_path / "t2.csv", "image,cat,dog\nz.png,1,0\n"), complete=True)
    with pytest.raises(WsmlError, match=r"lacks \['a.png'\]"):
        align_truth(observed, other_images)
