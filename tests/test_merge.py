"""`wsml merge`: answers (a CSV, or Label Studio's JSON export of the tasks `wsml suggest` writes) become observed
entries of a label CSV of the same form, read back by `read_label_csv`; every refusal names its row and writes
nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import error_of, invoke, write

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.answers import truth_answers
from wsml_fast.data.labels import read_label_csv
from wsml_fast.data.merge import merge_answers

CLASSES = ["cat", "dog", "owl"]
WIDE = "image,split,cat,dog,owl\na.png,train,1,,\nb.png,train,,0,\nc.png,valid,,,1\n"
COMPACT = "image,split,positives,negatives\na.png,train,cat,\nb.png,train,,dog\nc.png,valid,owl,\n"
# the labels of both files: 1 positive, 0 negative, -1 unobserved
OBSERVED = np.array([[1, -1, -1], [-1, 0, -1], [-1, -1, 1]])


def observed_csv(folder: Path, form: str, split: bool = True) -> Path:
    text = WIDE if form == "wide" else COMPACT
    if not split:
        text = "".join(",".join(c for i, c in enumerate(line.split(",")) if i != 1) + "\n" for line in text.split())
    if form == "compact":
        write(folder / "classes.txt", "".join(f"{c}\n" for c in CLASSES))
    return write(folder / "observed.csv", text)


def answers_csv(folder: Path, rows: list[str]) -> Path:
    return write(folder / "answers.csv", "image,class,answer\n" + "".join(f"{row}\n" for row in rows))


def labels_of(path: Path) -> np.ndarray:
    return read_label_csv(path).store.to_dense().astype(int)


@pytest.mark.parametrize("form", ["wide", "compact"])
@pytest.mark.parametrize("split", [True, False])
def test_answers_from_a_csv_round_trip_in_the_same_form(tmp_path: Path, form: str, split: bool) -> None:
    observed = observed_csv(tmp_path / "data", form, split)
    answers = answers_csv(tmp_path, ["a.png,dog,0", "c.png,cat,1", "b.png,dog,0", "a.png,dog,0", "b.png,owl,1"])
    out = tmp_path / "merged" / "observed.csv"
    out.parent.mkdir()
    result = invoke("merge", observed, answers, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        f"merged 3 answers (2 positive, 1 negative) into {out}; 1 already observed as answered, 1 repeated, "
        "0 tasks skipped (no annotation)"
    ]
    expected = OBSERVED.copy()
    expected[0, 1], expected[2, 0], expected[1, 2] = 0, 1, 1
    back = read_label_csv(out)
    assert back.images == ["a.png", "b.png", "c.png"] and back.classes == CLASSES
    assert (back.store.to_dense() == expected).all()
    assert (back.splits is None) == (not split)
    columns = "cat,dog,owl" if form == "wide" else "positives,negatives"
    assert out.read_text().splitlines()[0] == ("image,split," if split else "image,") + columns
    if form == "compact":
        assert out.with_name("classes.txt").read_text().split() == CLASSES
    assert (labels_of(observed) == OBSERVED).all()  # the original is untouched


def label_studio_task(number: int, image: str, asked: list[str], annotations: list[dict]) -> dict:
    """A task as Label Studio exports it: its id, the data `wsml suggest` wrote, the annotations."""
    data = {"image": f"/data/local-files/?d={image}", "wsml_image": image, "asked": asked, "question": "?"}
    return {"id": 100 + number, "data": data, "annotations": annotations, "predictions": []}


def annotation(ticked: list[str], cancelled: bool = False, other: bool = False) -> dict:
    """An annotation whose `label` choices tick `ticked` (`other`: plus a result of another control)."""
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ticked}}]
    if other:
        result.append({"from_name": "comment", "to_name": "image", "type": "textarea", "value": {"text": ["x"]}})
    return {"id": 7, "result": result, "was_cancelled": cancelled}


def test_answers_from_a_label_studio_export(tmp_path: Path) -> None:
    observed = observed_csv(tmp_path, "compact")
    export = [
        # ticked dog, left owl unticked: dog 1, owl 0; the cancelled annotation after it does not count
        label_studio_task(1, "a.png", ["dog", "owl"], [annotation(["dog"], other=True), annotation([], True)]),
        label_studio_task(2, "b.png", ["cat"], []),  # never annotated: skipped
        label_studio_task(3, "b.png", ["owl"], [annotation(["owl"], cancelled=True)]),  # only cancelled: skipped
        label_studio_task(4, "c.png", ["cat"], [annotation(["cat"]), annotation([])]),  # the last one: cat 0
        label_studio_task(5, "b.png", ["cat"], [annotation(["cat", "owl"])]),  # owl was not asked: still 1
    ]
    answers = write(tmp_path / "export.json", json.dumps(export))
    out = tmp_path / "merged.csv"
    result = invoke("merge", observed, answers, "--out", out)
    assert result.exit_code == 0, result.output
    assert "merged 5 answers (3 positive, 2 negative)" in result.output
    assert "2 tasks skipped (no annotation)" in result.output
    expected = OBSERVED.copy()
    expected[0, 1], expected[0, 2], expected[2, 0], expected[1, 0], expected[1, 2] = 1, 0, 0, 1, 1
    assert (labels_of(out) == expected).all()


def test_an_export_whose_choices_are_not_a_list_is_one_line(tmp_path: Path) -> None:
    """A string of choices must not be read letter by letter as classes; results of other shapes are passed by."""
    observed = observed_csv(tmp_path, "compact")
    bad = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": "dog"}}
    export = [label_studio_task(1, "a.png", ["dog"], [{"id": 7, "result": ["note", bad]}])]
    answers = write(tmp_path / "export.json", json.dumps(export))
    line = error_of("merge", observed, answers, "--out", tmp_path / "merged.csv")
    assert line.endswith("task 1 (id 101): a `label` result whose value.choices is not a list of classes")
    assert not (tmp_path / "merged.csv").exists()


REFUSALS = {
    "a value that is not 1 or 0": (
        ["b.png,cat,1", "a.png,dog,yes"],
        "line 3 (image 'a.png', class 'dog'): answer 'yes'",
    ),
    "an empty answer": (["a.png,dog,"], "line 2 (image 'a.png', class 'dog'): answer '' is not 1 or 0"),
    "an unknown image": (["b.png,cat,1", "", "z.png,cat,1"], "line 4 (image 'z.png', class 'cat'): image not in"),
    "an unknown class": (["a.png,emu,1"], "line 2 (image 'a.png', class 'emu'): class not in"),
    "a contradiction of an observed entry": (
        ["b.png,dog,1"],
        "line 2 (image 'b.png', class 'dog'): answer 1 contradicts",
    ),
    "a contradiction of another answer": (
        ["b.png,cat,1", "b.png,cat,0"],
        "line 3 (image 'b.png', class 'cat'): answer 0 contradicts line 2",
    ),
}


@pytest.mark.parametrize("problem", list(REFUSALS))
def test_every_refusal_names_the_row_and_writes_nothing(tmp_path: Path, problem: str) -> None:
    rows, said = REFUSALS[problem]
    observed = observed_csv(tmp_path / "data", "compact")
    out = tmp_path / "out" / "observed.csv"
    out.parent.mkdir()
    line = error_of("merge", observed, answers_csv(tmp_path, rows), "--out", out)
    assert line.startswith(f"error: {tmp_path / 'answers.csv'}: {said}"), line
    assert list(out.parent.iterdir()) == []


def test_a_label_studio_refusal_names_the_task(tmp_path: Path) -> None:
    observed = observed_csv(tmp_path, "wide")
    export = [
        label_studio_task(1, "a.png", ["dog"], [annotation([])]),
        label_studio_task(2, "a.png", ["cat"], [annotation([])]),
    ]
    line = error_of(
        "merge", observed, write(tmp_path / "export.json", json.dumps(export)), "--out", tmp_path / "new.csv"
    )
    assert line.startswith(
        f"error: {tmp_path / 'export.json'}: task 2 (id 102) (image 'a.png', class 'cat'): answer 0 contradicts"
    )
    export[1]["data"].pop("wsml_image")
    line = error_of(
        "merge", observed, write(tmp_path / "export.json", json.dumps(export)), "--out", tmp_path / "new.csv"
    )
    assert "task 2 (id 102) has no data.wsml_image and data.asked" in line
    assert not (tmp_path / "new.csv").exists()


def test_the_observed_csv_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    observed = observed_csv(tmp_path, "wide")
    before = observed.read_text()
    answers = answers_csv(tmp_path, ["a.png,dog,1"])
    assert "is the observed CSV itself; choose a new file, or pass --overwrite" in error_of(
        "merge", observed, answers, "--out", observed
    )
    assert observed.read_text() == before
    assert invoke("merge", observed, answers, "--out", observed, "--overwrite").exit_code == 0
    assert labels_of(observed)[0, 1] == 1


def test_a_compact_merge_never_replaces_another_class_list_unasked(tmp_path: Path) -> None:
    observed = observed_csv(tmp_path / "data", "compact")
    other = write(tmp_path / "elsewhere" / "classes.txt", "emu\nyak\n")
    line = error_of("merge", observed, answers_csv(tmp_path, ["a.png,dog,1"]), "--out", other.with_name("obs.csv"))
    assert f"{other} lists other classes than" in line
    assert other.read_text() == "emu\nyak\n" and not other.with_name("obs.csv").exists()


def test_an_answers_csv_needs_its_three_columns(tmp_path: Path) -> None:
    observed = observed_csv(tmp_path, "wide")
    answers = write(tmp_path / "answers.csv", "image,class,value\na.png,dog,1\n")
    line = error_of("merge", observed, answers, "--out", tmp_path / "new.csv")
    assert line == f"error: {answers}: no 'answer' column; an answers CSV has the columns image,class,answer"


def test_answers_from_the_truth_merge_into_the_truths_entries(tmp_path: Path) -> None:
    truth_csv = write(tmp_path / "truth.csv", "image,split,cat,dog,owl\na.png,train,1,1,0\nb.png,train,0,0,1\n")
    truth = read_label_csv(truth_csv, complete=True)
    asked = [("b.png", "owl"), ("a.png", "dog"), ("b.png", "cat"), ("a.png", "owl")]
    answers = truth_answers(truth, [image for image, _ in asked], [name for _, name in asked])
    assert answers.values.tolist() == [
        ["b.png", "owl", 1],
        ["a.png", "dog", 1],
        ["b.png", "cat", 0],
        ["a.png", "owl", 0],
    ]
    observed = write(tmp_path / "observed.csv", "image,split,cat,dog,owl\na.png,train,1,,\nb.png,train,,,\n")
    answers.to_csv(tmp_path / "answers.csv", index=False)
    merge_answers(observed, tmp_path / "answers.csv", tmp_path / "merged.csv")
    assert labels_of(tmp_path / "merged.csv").tolist() == [[1, 1, 0], [0, -1, 1]]
    for image, name, missing in (("c.png", "cat", "image 'c.png'"), ("a.png", "emu", "class 'emu'")):
        with pytest.raises(WsmlError, match=f"{truth_csv}: no {missing} \\(asked entry 2\\)"):
            truth_answers(truth, ["a.png", image], ["cat", name])
