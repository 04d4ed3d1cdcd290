"""`wsml predict`'s output, a batch at a time: CSV rows, terminal lines, --top-k, the atomic file, and what
`--out` may replace."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import error_of, invoke, write

from wsml_fast.core.errors import WsmlError
from wsml_fast.inference.predict import PredictionRows, best_classes, write_predictions

CLASSES = ["cat", "dog", "owl"]
PROBABILITIES = np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.6], [0.3, 0.3, 0.4]], dtype=np.float32)


def batches(log: list[str] | None = None, fail_at: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """The three images above, one batch each; `log` records when each batch is asked for."""
    for i, row in enumerate(PROBABILITIES):
        if log is not None:
            log.append(f"batch {i}")
        if i == fail_at:
            try:  # as `load_rgb` fails: an OSError, said as a WsmlError naming the image
                raise OSError("broken")
            except OSError:
                raise WsmlError("c.png: cannot read image (broken)") from None
        yield [f"{'abc'[i]}.png"], row[None]


def test_best_classes_are_sorted_highest_first() -> None:
    top, scores = best_classes(PROBABILITIES, 2)
    assert top.tolist() == [[1, 2], [0, 2], [2, 0]]  # the tie 0.3 / 0.3 of the last row: either of the two
    np.testing.assert_allclose(scores, [[0.7, 0.2], [0.9, 0.6], [0.4, 0.3]], rtol=1e-6)


def test_default_rows_hold_every_class_and_print_the_threshold(tmp_path: Path) -> None:
    out, shown = tmp_path / "preds.csv", []
    assert write_predictions(out, batches(shown), PredictionRows(CLASSES, 0.5), shown.append) == 3
    assert out.read_text().splitlines() == [
        "image,cat,dog,owl",
        "a.png,0.100000,0.700000,0.200000",
        "b.png,0.900000,0.050000,0.600000",
        "c.png,0.300000,0.300000,0.400000",
    ]
    # each batch's line is shown before the next batch is scored: the rows stream through
    assert shown == [
        "batch 0",
        "a.png: dog (0.70)",
        "batch 1",
        "b.png: cat (0.90), owl (0.60)",
        "batch 2",
        "c.png: (none)",
    ]


def test_top_k_rows_hold_the_best_classes_and_their_scores(tmp_path: Path) -> None:
    out, shown = tmp_path / "preds.csv", []
    write_predictions(out, batches(), PredictionRows(CLASSES, 0.95, top_k=2), shown.append)
    lines = out.read_text().splitlines()
    assert lines[:3] == ["image,labels,scores", "a.png,dog|owl,0.700000|0.200000", "b.png,cat|owl,0.900000|0.600000"]
    assert lines[3] in ("c.png,owl|cat,0.400000|0.300000", "c.png,owl|dog,0.400000|0.300000")
    assert shown[:2] == ["a.png: dog (0.70), owl (0.20)", "b.png: cat (0.90), owl (0.60)"]  # top k, not threshold


@pytest.mark.parametrize("k", [0, 4])
def test_top_k_must_fit_the_classes(k: int) -> None:
    with pytest.raises(WsmlError, match=rf"--top-k {k}: give a number from 1 to 3 \(the run's classes\)"):
        PredictionRows(CLASSES, top_k=k)


def test_top_k_refuses_classes_holding_the_separator() -> None:
    with pytest.raises(WsmlError, match=r"class 'a\|b' holds '\|'"):
        PredictionRows(["a|b", "c"], top_k=1)
    assert PredictionRows(["a|b", "c"]).top_k is None  # one column per class needs no separator


@pytest.mark.parametrize("failure", [WsmlError, KeyboardInterrupt])
def test_an_interrupted_predict_leaves_no_half_file(tmp_path: Path, failure: type[BaseException]) -> None:
    out = tmp_path / "preds.csv"
    out.write_text("the previous predictions\n")

    def interrupted() -> Iterator[tuple[list[str], np.ndarray]]:
        yield from batches(fail_at=2 if failure is WsmlError else None)
        raise KeyboardInterrupt

    with pytest.raises(failure) as caught:
        write_predictions(out, interrupted(), PredictionRows(CLASSES), lambda line: None)
    if failure is WsmlError:  # the image's own error, not read as a failure to write preds.csv
        assert str(caught.value) == "c.png: cannot read image (broken)"
    assert out.read_text() == "the previous predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["preds.csv"]  # the temporary file is gone too


def test_predict_replaces_only_its_own_earlier_predictions(
    trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    image = demo_folder / "images" / "test" / "00000.png"
    out = tmp_path / "preds.csv"
    for extra in ([], ["--top-k", "2"], []):  # its own output of either kind is replaced
        assert invoke("predict", trained_run, image, "--out", out, *extra).exit_code == 0
    labels = write(
        tmp_path / "labels.csv", "image,zero,one,two,three,four,five,six,seven,eight,nine\na.png,1,,,,,,,,,\n"
    )
    notes = write(tmp_path / "notes.txt", "mine\n")
    for other in (labels, notes):  # a label file under the same header, any other file: only with --overwrite
        line = error_of("predict", trained_run, image, "--out", other)
        assert line == (
            f"error: --out {other}: exists and is not a predictions CSV of wsml's; choose another file, or pass "
            "--overwrite to replace it"
        )
    assert labels.read_text().startswith("image,zero") and notes.read_text() == "mine\n"
    assert invoke("predict", trained_run, image, "--out", notes, "--overwrite").exit_code == 0
    assert notes.read_text().startswith("image,zero,")


def test_predict_never_replaces_an_input(trained_run: Path, demo_folder: Path, tmp_path: Path) -> None:
    image = shutil.copy(demo_folder / "images" / "test" / "00000.png", tmp_path / "x.png")
    model = shutil.copy(trained_run / "model.pth", tmp_path / "model.pth")
    before = {path: path.read_bytes() for path in (image, model, demo_folder / "observed.csv")}
    for out, says in (
        (image, "is one of the images being scored"),
        (model, "is the model being used"),
        (demo_folder / "observed.csv", f"is a label file of the dataset {demo_folder}"),
    ):
        line = error_of("predict", model, tmp_path, "--out", out, "--overwrite")
        assert line == f"error: --out {out}: {says}; write predictions elsewhere"
    assert {path: path.read_bytes() for path in before} == before
