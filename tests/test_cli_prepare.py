"""`wsml prepare` and recipes through the command line."""

from pathlib import Path

import pandas as pd
import yaml
from helpers import TINY, error_of, invoke

from wsml_fast.data.labels import read_label_csv


def test_prepare_a_full_label_csv_then_train_on_it(demo_folder: Path, tmp_path: Path) -> None:
    full = pd.read_csv(demo_folder / "truth.csv").drop(columns="split")
    full.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "prepared"
    result = invoke(
        "prepare",
        "csv",
        "--root",
        tmp_path / "labels.csv",
        "--image-root",
        demo_folder / "images",
        "--out",
        out,
        "--seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert f"wsml train --data {out}" in result.output
    observed = read_label_csv(out / "observed.csv")
    train = observed.store.to_dense()[observed.splits == "train"]
    assert ((train == 1).sum(1) <= 1).all() and (train == -1).any()  # single positive, rest unobserved
    assert len(observed.images) == len(full)
    trained = invoke("train", "--data", out, *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.output


def test_unprepared_dataset_says_how_to_prepare_it() -> None:
    message = error_of("train", "--dataset", "cub", "--scheme", "an")
    assert "wsml prepare cub --root RAW_DIR" in message and "CUB_200_2011.tgz" in message


def test_recipe_settings_and_their_scheme_section_are_recorded(demo_folder: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("epochs: 1\nlr: 0.003\nschemes:\n  bce: {lr: 0.004}\n  an: {lr: 0.005}\n")
    result = invoke(
        "train",
        "--data",
        demo_folder,
        *[a for a in TINY if a not in ("--epochs", "2")],
        "--recipe",
        recipe,
        "--scheme",
        "bce",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    document = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert document["config"]["lr"] == 0.004 and document["config"]["epochs"] == 1
    assert document["sources"]["lr"] == f"recipe:{recipe}" and document["sources"]["scheme"] == "cli"
    assert document["sources"]["bs"] == "cli" and document["sources"]["opt"] == "default"


def test_recipes_lists_the_paper_settings() -> None:
    result = invoke("recipes")
    assert result.exit_code == 0
    for name in ("demo", "voc", "coco", "nuswide", "cub"):
        assert f"{name}:" in result.output
    assert "resnet50.tv_in1k" in result.output
