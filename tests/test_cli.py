"""The whole path through the command line: train -> eval -> predict, and the one-line errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastai.callback.core import Callback
from helpers import TINY, error_of, invoke, write

import wsml_fast.training.run
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset
from wsml_fast.inference.predict import collect_images
from wsml_fast.inference.trained import load_model
from wsml_fast.model.modelfile import ModelFile


def test_train_writes_a_complete_run_folder(trained_run: Path, demo_folder: Path) -> None:
    assert {p.name for p in trained_run.iterdir()} >= {
        "config.yaml",
        "metrics.csv",
        "results.json",
        "model.pth",
        "train.log",
    }
    metrics = pd.read_csv(trained_run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"train_loss", "valid_map", "seconds"} <= set(metrics.columns)
    results = json.loads((trained_run / "results.json").read_text())
    assert results["best_epoch"] == int(metrics.loc[metrics["valid_map"].idxmax(), "epoch"])
    assert results["classes"][:2] == ["zero", "one"] and 0 <= results["test_map"] <= 100
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["config"]["backbone"] == "test_efficientnet" and config["sources"]["backbone"] == "cli"
    assert config["config"]["data"] == str(demo_folder.resolve())
    log = (trained_run / "train.log").read_text()
    assert "epoch 2" in log and "test mAP" in log


def test_eval_reproduces_the_test_map_and_prints_json(trained_run: Path) -> None:
    result = invoke("eval", trained_run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    results = json.loads((trained_run / "results.json").read_text())
    assert report["map"] == pytest.approx(results["test_map"], abs=1e-4)
    assert set(report["per_class"]) | set(report["skipped"]) == set(results["classes"])
    text = invoke("eval", trained_run, "--split", "valid", "--map-convention", "paper")
    assert text.exit_code == 0 and "valid mAP" in text.output and "paper convention" in text.output


def test_predict_writes_probabilities_for_files_and_folders(
    trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    one = demo_folder / "images" / "test" / "00000.png"
    result = invoke("predict", trained_run, one, demo_folder / "images" / "valid", "--out", out, "--threshold", "0")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame.columns[:3]) == ["image", "zero", "one"] and len(frame) == 17
    assert frame.iloc[:, 1:].to_numpy().min() >= 0 and frame.iloc[:, 1:].to_numpy().max() <= 1
    assert f"{one}: zero (" in result.output  # threshold 0: every label printed


def test_predict_scores_a_batch_at_a_time(trained_run: Path, demo_folder: Path) -> None:
    trained = load_model(trained_run)
    images = collect_images([demo_folder / "images" / "valid"])
    batches = list(trained.batches(images, batch_size=5))
    assert [len(names) for names, _ in batches] == [5, 5, 5, 1]
    assert [name for names, _ in batches for name in names] == [str(p) for p in images]
    model = trained.classifier()
    no_labels = LabelStore.empty(16, 0)
    dataset = ImageLabelDataset(Path("."), [str(p) for p in images], no_labels, trained.img_size)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.stack([dataset[i][0] for i in range(16)]))).numpy()
    np.testing.assert_allclose(np.concatenate([p for _, p in batches]), expected, atol=1e-5)


def test_predict_top_k_writes_and_prints_the_best_classes(trained_run: Path, demo_folder: Path, tmp_path: Path) -> None:
    folder = demo_folder / "images" / "valid"
    assert invoke("predict", trained_run, folder, "--out", tmp_path / "all.csv").exit_code == 0
    result = invoke("predict", trained_run, folder, "--out", tmp_path / "top.csv", "--top-k", "2")
    assert result.exit_code == 0, result.output
    every, top = pd.read_csv(tmp_path / "all.csv"), pd.read_csv(tmp_path / "top.csv")
    assert list(top.columns) == ["image", "labels", "scores"] and list(top["image"]) == list(every["image"])
    for (image, labels, scores), (_, *row) in zip(top.itertuples(index=False), every.itertuples(), strict=True):
        ranked = sorted(zip(row[1:], every.columns[1:], strict=True), reverse=True)[:2]
        assert labels.split("|") == [name for _, name in ranked]
        assert [float(s) for s in scores.split("|")] == pytest.approx([p for p, _ in ranked], abs=1e-6)
        assert f"{image}: {ranked[0][1]} ({ranked[0][0]:.2f}), {ranked[1][1]} ({ranked[1][0]:.2f})" in result.output
    assert "--top-k 0: give a number from 1 to" in error_of("predict", trained_run, folder, "--top-k", "0")


def test_full_label_scheme_trains_on_truth(demo_folder: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data", demo_folder, *TINY, "--epochs", "1", "--scheme", "bce", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "scheme bce" in (tmp_path / "r" / "train.log").read_text()


def test_bad_input_gets_one_line_errors(
    tmp_path: Path, trained_run: Path, demo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where default run folders would appear
    images = tmp_path / "images"
    images.mkdir()
    no_image = write(tmp_path / "a.csv", "file,cat\nx.png,1\n")
    assert "no 'image' column" in error_of("train", "--csv", no_image, "--images", images)
    missing = write(tmp_path / "b.csv", "image,split,cat\nx.png,train,1\ny.png,train,0\nz.png,valid,1\n")
    assert "3 of 3 listed images are missing" in error_of("train", "--csv", missing, "--images", images, *TINY)
    assert "not a timm model; did you mean" in error_of("train", "--data", demo_folder, "--backbone", "resnet5")
    assert "--scheme 'nope' is not one of" in error_of("train", "--scheme", "nope")
    assert "not a wsml run folder" in error_of("eval", tmp_path)
    assert "no such run folder or model file" in error_of("predict", tmp_path / "none", one_file(demo_folder))
    assert "no such file or folder" in error_of("predict", trained_run, tmp_path / "ghost.png")
    truth_dir = tmp_path / "other"
    (truth_dir / "images").mkdir(parents=True)
    write(truth_dir / "observed.csv", "image,split,cat\nx.png,test,1\n")
    assert "class columns differ from the model's" in error_of("eval", trained_run, "--data", truth_dir)
    assert "already holds a run" in error_of("train", "--data", demo_folder, *TINY, "--out", trained_run)
    bad_weights = write(tmp_path / "w.pth", "garbage")
    assert "not a readable state dict" in error_of("train", "--data", demo_folder, *TINY, "--weights", bad_weights)
    assert not (tmp_path / "runs").exists()  # failed runs leave no empty run folders behind


def one_file(folder: Path) -> Path:
    return folder / "images" / "test" / "00000.png"


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "predict", "recipes"):
        assert command in result.output


def test_linear_mode_caches_features_and_saves_the_whole_classifier(
    demo_folder: Path, tmp_path: Path, private_home: Path
) -> None:
    args = ["train", "--data", demo_folder, *TINY, "--mode", "linear", "--lr", "0.01"]
    first = invoke(*args, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    assert "extracted, cached" in first.output
    cached = list((private_home / "cache" / "features").glob("*.pt"))
    assert len(cached) == 2  # train and valid
    second = invoke(*args, "--out", tmp_path / "b")
    assert second.exit_code == 0 and "from cache" in second.output
    times = ["seconds", "train_seconds"]  # extracting draws no random number: the same run either way
    metrics = [pd.read_csv(tmp_path / run / "metrics.csv").drop(columns=times) for run in ("a", "b")]
    pd.testing.assert_frame_equal(*metrics)
    report = invoke("eval", tmp_path / "b", "--json")  # model.pth holds body and head
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["map"] == pytest.approx(
        json.loads((tmp_path / "b" / "results.json").read_text())["test_map"], abs=1e-4
    )


class StageStart(Callback):
    """At the start of the second fit (the end-to-end stage), keep what the model and ROLE hold, and what the run
    folder holds as the best so far."""

    order = 99

    def __init__(self) -> None:
        self.fits, self.seen = 0, {}

    def before_fit(self) -> None:
        self.fits += 1
        if self.fits == 2:
            run = self.learn.path
            self.seen = {
                "weights": {k: v.clone() for k, v in self.learn.model.state_dict().items()},
                "estimates": self.learn.role.estimate_logits.detach().clone(),
                "best weights": ModelFile.load(run / "model.pth").weights,
                "best estimates": torch.load(run / "scheme_state.pt", weights_only=True)["RoleCallback"],
            }


def test_linear_init_runs_linear_epochs_on_features_then_starts_end_to_end_from_the_best(
    demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, build = StageStart(), wsml_fast.training.run.build_learner

    def build_with_spy(setup, stop, history, cbs=()):
        return build(setup, stop, history, [*cbs, spy])

    monkeypatch.setattr(wsml_fast.training.run, "build_learner", build_with_spy)
    protocol = ["--mode", "linear-init", "--linear-epochs", "2", "--linear-lr", "0.05", "--linear-bs", "8"]
    paper_style = ["--opt", "adam", "--schedule", "constant", "--lr", "0.01", "--epochs", "1", "--scheme", "role"]
    result = invoke("train", "--data", demo_folder, *TINY, *protocol, *paper_style, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "features: 48 extracted" in result.output  # the linear phase trains on cached features
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]  # 2 linear epochs, then --epochs 1 end-to-end: one numbering
    assert metrics["lr"].tolist() == pytest.approx([0.05, 0.05, 0.01])  # each stage its own rate
    seen = spy.seen
    for key, value in seen["best weights"].items():  # the end-to-end stage starts from the best linear epoch
        assert torch.equal(seen["weights"][key], value), key
    assert torch.equal(seen["estimates"], seen["best estimates"]["estimate_logits"])  # ROLE's estimates too


@pytest.mark.parametrize("opt", ["adam", "sgd"])  # sgd: weight decay must not reach the frozen body either
def test_linear_epochs_leave_the_body_and_its_batchnorm_statistics_untouched(
    demo_folder: Path, tmp_path: Path, opt: str
) -> None:
    from fastai.torch_core import set_seed

    from wsml_fast.model.classifier import build_model

    result = invoke("train", "--data", demo_folder, *TINY, "--mode", "linear", "--opt", opt, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    set_seed(0, reproducible=True)  # what `wsml train --seed 0` does before building the model
    initial, _, _ = build_model("test_efficientnet", 10, pretrained=False, img_size=32)
    trained = ModelFile.load(tmp_path / "r" / "model.pth").weights
    for key, value in initial.state_dict().items():
        if key.startswith("body."):
            assert torch.equal(trained[key], value), key
    assert not torch.equal(trained["head.weight"], initial.state_dict()["head.weight"])


def test_llcp_run_records_corrections_diagnostics_and_checkpointed_labels(demo_folder: Path, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "llcp"
    result = invoke(
        "train",
        "--data",
        demo_folder,
        *TINY,
        "--epochs",
        "3",
        "--scheme",
        "llcp",
        "--delta-rel",
        "0.5",
        "--track-memorization",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(out / "metrics.csv")
    # B=16, C=10, Delta=0.5%: k = ceil(0.8) = 1 per batch from epoch 2 on; 48 train images make 3 batches
    assert list(metrics["ll_selected"]) == [0, 3, 3]
    assert list(metrics["ll_corrections"]) == [0, 3, 6]
    assert metrics["train_recovery_map"].between(0, 100).all()
    corrections = pd.read_csv(out / "corrected_labels.csv")
    assert len(corrections) == 6 and set(corrections["epoch"]) == {2, 3}
    state = torch.load(out / "scheme_state.pt", weights_only=True)["LargeLossCallback"]
    best = int(json.loads((out / "results.json").read_text())["best_epoch"])
    assert len(state["keys"]) == len(state["epochs"]) == int(metrics.loc[best - 1, "ll_corrections"])
    memorization = pd.read_csv(out / "memorization.csv")
    assert set(memorization["kind"]) == {"false_negative", "true_negative"}
    assert (out / "memorization.png").stat().st_size > 1000


def test_role_saves_its_label_estimates_with_the_weights(demo_folder: Path, tmp_path: Path) -> None:
    import torch

    result = invoke("train", "--data", demo_folder, *TINY, "--scheme", "role", "--out", tmp_path / "role")
    assert result.exit_code == 0, result.output
    assert "expected-positives not given" in result.output
    state = torch.load(tmp_path / "role" / "scheme_state.pt", weights_only=True)["RoleCallback"]
    assert state["estimate_logits"].shape == (48, 10)


def test_compile_failure_falls_back_with_a_message(
    demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    result = invoke("train", "--data", demo_folder, *TINY, "--epochs", "1", "--compile", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "--compile failed (RuntimeError: no compiler here); running uncompiled" in result.output


def test_the_compile_trial_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial forward (here eager: a CPU may not compile) moves no batch-norm statistic and draws no dropout."""
    import torch

    from wsml_fast.training.learner import compile_in_place

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    sample, said = torch.randn(2, 3, 8, 8), []
    random_state = torch.get_rng_state()
    compile_in_place(model, sample, said.append)
    assert said == ["model compiled with torch.compile"] and model.training
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), random_state)
