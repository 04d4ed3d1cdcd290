"""The model file stands alone: what it holds, its thresholds fitted at the end of training and again by
`wsml calibrate`, eval's F1 family, predict's decisions, `wsml_fast.load_model`, and files of other layouts."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY, error_of, invoke, write

import wsml_fast
from wsml_fast.core.errors import WsmlError
from wsml_fast.model.modelfile import ModelFile


def thresholds_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as file:
        return {row["class"]: row for row in csv.DictReader(file)}


def test_the_model_file_describes_the_model_and_holds_the_fitted_thresholds(trained_run: Path) -> None:
    model = ModelFile.load(trained_run / "model.pth")
    results = json.loads((trained_run / "results.json").read_text())
    assert model.spec.backbone == "test_efficientnet" and model.spec.img_size == 32 and model.spec.boost_lu is None
    assert list(model.spec.classes) == results["classes"] and model.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.threshold_rule == "f1" and model.version == wsml_fast.__version__
    assert model.training["scheme"] == "an" and model.training["epoch"] == results["best_epoch"]
    table = thresholds_csv(trained_run / "thresholds.csv")
    assert list(table) == results["classes"]
    assert model.thresholds == pytest.approx([float(table[c]["threshold"]) for c in results["classes"]], abs=1e-6)
    assert len(set(model.thresholds)) > 1  # per class, not one value


def test_a_copied_model_file_alone_evaluates_and_predicts_like_its_run(
    trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "elsewhere" / "tagger.pth"
    alone.parent.mkdir()
    shutil.copy(trained_run / "model.pth", alone)
    from_run = json.loads(invoke("eval", trained_run, "--json").output)
    from_file = invoke("eval", alone, "--data", demo_folder, "--json")
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.output) == from_run
    images = demo_folder / "images" / "valid"
    for model, out in ((trained_run, tmp_path / "a.csv"), (alone, tmp_path / "b.csv")):
        assert invoke("predict", model, images, "--out", out).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))


def test_eval_reports_the_f1_family_at_the_models_thresholds_as_training_did(trained_run: Path) -> None:
    report = json.loads(invoke("eval", trained_run, "--json").output)
    results = json.loads((trained_run / "results.json").read_text())
    for variant in ("at_thresholds", "at_0.5", "top3"):
        assert report[variant] == pytest.approx(results["test_f1"][variant])
        assert set(report[variant]) == {"cp", "cr", "cf1", "op", "or", "of1"}
    model = ModelFile.load(trained_run / "model.pth")
    assert [report["classes"][c]["threshold"] for c in model.spec.classes] == pytest.approx(model.thresholds)
    row = report["classes"]["zero"]
    assert set(row) == {"ap", "threshold", "precision", "recall", "f1", "positives"}
    assert row["f1"] == pytest.approx(2 * row["precision"] * row["recall"] / (row["precision"] + row["recall"]))
    text = invoke("eval", trained_run).output
    assert "test at thresholds (f1): CP" in text and "test top-3: CP" in text and "test at 0.5: CP" in text


def test_predict_decides_at_each_classs_threshold_unless_one_is_forced(
    trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    model = wsml_fast.load_model(trained_run)
    images = sorted((demo_folder / "images" / "valid").glob("*.png"))
    probabilities = model.probabilities(images)  # unrounded, as predict compares them
    for forced in (None, 0.2):
        option = ["--threshold", forced] if forced is not None else []
        result = invoke("predict", trained_run, *images, "--out", tmp_path / "p.csv", *option)
        assert result.exit_code == 0, result.output
        cut = model.thresholds if forced is None else np.full(10, forced)
        lines = result.output.splitlines()[: len(images)]
        for image, row, line in zip(images, probabilities, lines, strict=True):
            decided = [f"{c} ({p:.2f})" for c, p, t in zip(model.classes, row, cut, strict=True) if p >= t]
            assert line == f"{image}: {', '.join(decided) if decided else '(none)'}"
        written = pd.read_csv(tmp_path / "p.csv")  # the CSV keeps the probabilities, not the decisions
        np.testing.assert_allclose(written[model.classes].to_numpy(), probabilities, atol=1e-6)


def test_calibrate_refits_the_thresholds_and_rewrites_both_files(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = ModelFile.load(run / "model.pth")
    result = invoke("calibrate", run, "--thresholds", "fixed:0.3")
    assert result.exit_code == 0, result.output
    after = ModelFile.load(run / "model.pth")
    assert after.thresholds == [0.3] * 10 and after.threshold_rule == "fixed:0.3"
    assert all(torch.equal(after.weights[k], v) for k, v in before.weights.items())
    assert {row["threshold"] for row in thresholds_csv(run / "thresholds.csv").values()} == {"0.300000"}
    assert invoke("calibrate", run).exit_code == 0  # the run's own rule (f1) again: the same thresholds
    assert ModelFile.load(run / "model.pth").thresholds == pytest.approx(before.thresholds)
    strict = invoke("calibrate", run, "--thresholds", "precision:0.99")
    assert strict.exit_code == 0 and "cannot reach valid precision 0.99" in strict.output
    fitted = ModelFile.load(run / "model.pth")
    table = thresholds_csv(run / "thresholds.csv")
    pairs = zip(fitted.spec.classes, fitted.thresholds, before.thresholds, strict=True)
    # each class reaches the precision on valid, or keeps its F1 threshold (and was named above)
    assert all(float(table[c]["precision"]) >= 0.99 or t == pytest.approx(f) for c, t, f in pairs)


def test_calibrating_a_model_file_outside_its_run_rewrites_it_alone(
    trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "tagger.pth"
    shutil.copy(trained_run / "model.pth", alone)
    mine = write(tmp_path / "thresholds.csv", "someone else's file\n")
    result = invoke("calibrate", alone, "--data", demo_folder, "--thresholds", "fixed:0.4")
    assert result.exit_code == 0, result.output
    assert ModelFile.load(alone).thresholds == [0.4] * 10 and f"written to {alone}\n" in result.output
    assert mine.read_text() == "someone else's file\n"


def test_calibrate_refuses_data_with_other_classes_and_a_wrong_rule(trained_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    write(other / "observed.csv", "image,split,cat\nx.png,valid,1\n")
    assert "class columns differ from the model's" in error_of("calibrate", trained_run, "--data", other)
    line = error_of("calibrate", trained_run, "--thresholds", "precision:1.5")
    assert line == "error: --thresholds precision:1.5: precision's value must be a number above 0 and at most 1"
    assert "--thresholds precision:1.5" in error_of("train", *TINY, "--thresholds", "precision:1.5")


def test_python_code_loads_a_model_and_decides(trained_run: Path, demo_folder: Path) -> None:
    model = wsml_fast.load_model(trained_run / "model.pth")
    images = sorted((demo_folder / "images" / "valid").glob("*.png"))[:3]
    probabilities = model.probabilities(images)
    assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32
    decided = model.decide(probabilities)
    pairs = [zip(model.classes, row >= model.thresholds, strict=True) for row in probabilities]
    expected = [[c for c, positive in row if positive] for row in pairs]
    assert decided == expected and model.decide(probabilities, threshold=1.1) == [[], [], []]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"w": torch.zeros(2)}, "bare weights (a state dict, as wsml before 0.2 wrote model.pth)"),
        ({"model": {}, "meta": {}}, "a training checkpoint, not a model file; pass the run's model.pth"),
        ({"format": "wsml-model", "layout": 9, "wsml_version": "9.0"}, "a wsml model file of layout 9"),
        ([1, 2, 3], "not a wsml model file; pass the model.pth of a wsml run"),
    ],
)
def test_a_file_of_another_layout_says_what_it_is(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "x.pth"
    torch.save(content, path)
    with pytest.raises(WsmlError, match=re.escape(message)):
        ModelFile.load(path)
    assert message in error_of("predict", path, path)
