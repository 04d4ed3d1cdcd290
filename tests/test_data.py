from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write
from PIL import Image

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.demo import PALETTE, class_names, make_demo_dataset
from wsml_fast.data.loaders import ImageLabelDataset, make_loader
from wsml_fast.data.sources import from_csv, from_folder, resolve_source
from wsml_fast.data.splits import split_train_valid
from wsml_fast.data.table import check_images, load_table


def test_dataset_yields_uint8_image_target_with_unobserved_and_index(demo_folder: Path) -> None:
    table = load_table(from_folder(demo_folder))
    rows = table.rows("train")
    ds = ImageLabelDataset(
        demo_folder / "images", [table.images[i] for i in rows], table.observed.take(rows), 32, augment=True
    )
    image, index = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert index == 3
    target = ds.labels.to(torch.device("cpu")).dense(torch.tensor([index]))[0]
    assert target.tolist() == table.observed.to_dense()[rows[3]].tolist()
    assert (target == 1).sum() == 1 and (target == -1).sum() == 9  # one observed positive, rest unobserved


def test_loader_batches_carry_the_item_index(demo_folder: Path) -> None:
    table = load_table(from_folder(demo_folder))
    rows = table.rows("valid")
    ds = ImageLabelDataset(demo_folder / "images", [table.images[i] for i in rows], table.truth.take(rows), 32)
    images, index = next(iter(make_loader(ds, 8, False, 0, torch.device("cpu"))))
    assert images.shape == (8, 3, 32, 32) and index.tolist() == list(range(8))


def test_split_is_held_out_when_missing(tmp_path: Path) -> None:
    rows = "".join(f"{i}.png,{i % 2},\n" for i in range(10))
    csv = write(tmp_path / "labels.csv", "image,cat,dog\n" + rows)
    (tmp_path / "img").mkdir()
    table = load_table(from_csv(csv, tmp_path / "img"), valid_fraction=0.2, seed=0)
    assert sorted(table.splits) == ["train"] * 8 + ["valid"] * 2
    assert any("no split column" in note for note in table.notes)
    again = load_table(from_csv(csv, tmp_path / "img"), valid_fraction=0.2, seed=0)
    assert list(again.splits) == list(table.splits)


def test_training_holds_out_the_rows_wsml_prepare_would(tmp_path: Path) -> None:
    rows = "".join(f"{i}.png,{'test' if i % 5 == 0 else 'train'},{i % 2},\n" for i in range(30))
    csv = write(tmp_path / "labels.csv", "image,split,cat,dog\n" + rows)
    (tmp_path / "img").mkdir()
    table = load_table(from_csv(csv, tmp_path / "img"), valid_fraction=0.25, seed=7)
    train = np.array([i for i in range(30) if i % 5])
    assert table.rows("valid").tolist() == train[split_train_valid(len(train), 7, 0.25)[1]].tolist()
    assert len(table.rows("test")) == 6


def test_missing_and_unreadable_images_are_counted_before_training(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write(root / "bad.png", "not an image")
    with pytest.raises(WsmlError, match=r"2 of 3 listed images are missing .*\(first: a.png, b.png\)"):
        check_images(root, ["a.png", "b.png", "bad.png"], tmp_path / "observed.csv")
    with pytest.raises(WsmlError, match=r"1 of 1 listed images are unreadable .*bad.png"):
        check_images(root, ["bad.png"], tmp_path / "observed.csv")


def test_source_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(WsmlError, match="--data .*folder not found"):
        resolve_source(None, str(tmp_path / "nope"), None, None)
    with pytest.raises(WsmlError, match="--csv needs --images"):
        resolve_source(None, None, str(write(tmp_path / "a.csv", "image,x\n")), None)
    with pytest.raises(WsmlError, match="--dataset and --data name two data sources"):
        resolve_source("demo", str(tmp_path), None, None)
    with pytest.raises(WsmlError, match="run `wsml prepare cub"):
        resolve_source("cub", None, None, None)


def test_demo_dataset_is_made_once_in_the_data_home_and_says_so(
    private_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = resolve_source(None, None, None, None)
    assert first.observed_csv == private_home / "data" / "demo" / "observed.csv"
    assert "demo: making 3000 images" in capsys.readouterr().out
    assert len(load_table(first).images) == 3000
    resolve_source("demo", None, None, None)
    assert capsys.readouterr().out == ""  # made once


def test_demo_dataset_is_genuinely_multilabel(demo_folder: Path) -> None:
    table = load_table(from_folder(demo_folder))
    positives = table.truth.count(1, axis=1)
    assert positives.min() >= 1 and positives.max() <= 4 and positives.mean() > 1.5
    train = table.observed_of("train")
    assert np.all(train.count(1, axis=1) == 1)
    rows, cols = train.entries(1)
    assert np.all(table.train_truth().lookup(rows, cols) == 1)  # the kept positive is a true one


def test_demo_variant_draws_digits_in_colours_a_class_per_colour_and_digit(tmp_path: Path) -> None:
    folder = make_demo_dataset(
        tmp_path / "rare", seed=2, sizes={"train": 24, "valid": 8, "test": 8}, colours=4, digits=(1, 3)
    )
    table = load_table(from_folder(folder))
    assert table.classes == class_names(4) and len(table.classes) == 40
    assert table.classes[0] == "red-zero" and table.classes[13] == "green-three" and table.classes[39] == "yellow-nine"
    positives = table.truth.count(1, axis=1)
    assert positives.min() >= 1 and positives.max() <= 3 and len(set(positives)) > 1
    train = table.observed_of("train")
    assert np.all(train.count(1, axis=1) == 1)
    rows, cols = train.entries(1)
    assert np.all(table.train_truth().lookup(rows, cols) == 1)
    tints = np.array(list(PALETTE.values())[:4], dtype=float)
    for row, image in enumerate(table.images):  # the colours drawn are the colours of the image's classes
        pixels = np.asarray(Image.open(folder / "images" / image), dtype=float).reshape(-1, 3)
        strokes = pixels[pixels.max(axis=1) > 128]
        nearest = np.argmax(
            (strokes / np.linalg.norm(strokes, axis=1, keepdims=True))
            @ (tints / np.linalg.norm(tints, axis=1, keepdims=True)).T,
            axis=1,
        )
        truth_classes = table.truth.take(np.array([row])).entries(1)[1]
        assert set(nearest.tolist()) == set((truth_classes // 10).tolist()), image


@pytest.mark.parametrize(
    "variant", [{"colours": 7}, {"colours": 0}, {"digits": (0, 2)}, {"digits": (3, 2)}, {"digits": (1, 5)}]
)
def test_demo_variant_refuses_what_a_2x2_grid_and_the_palette_cannot_hold(tmp_path: Path, variant: dict) -> None:
    with pytest.raises(ValueError, match="colours must be 1 to 6|digits must be"):
        make_demo_dataset(tmp_path / "bad", sizes={"train": 2, "valid": 1, "test": 1}, **variant)
    assert not (tmp_path / "bad").exists()
