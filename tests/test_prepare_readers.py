"""Each format reader on a tiny tree in the real layout, checked cell by cell against hand-made values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import read_label_csv
from wsml_fast.prepare import prepare_dataset
from wsml_fast.prepare.voc import CLASSES as VOC_CLASSES

E = -1.0  # unobserved
# With 4 official-train rows, RandomState(1200).permutation(4) is [0 2 1 3]: row 3 goes to valid.
# With 5 rows it is [4 2 0 1 3]: again row 3 goes to valid.


def _touch(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\xff\xd8\xff\xd9")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _convert(name: str, root: Path, out: Path, **options):
    logs: list[str] = []
    summary = prepare_dataset(name, root, out, log=logs.append, **options)
    observed = read_label_csv(out / "observed.csv")
    truth = read_label_csv(out / "truth.csv", complete=True) if (out / "truth.csv").exists() else None
    return observed, truth, summary, logs


def _assert_single_positive(row: np.ndarray, truth_row: list[float]) -> None:
    """A train row: exactly one observed cell, positive, and positive in the truth."""
    assert (row != E).sum() == int(any(v == 1 for v in truth_row))
    assert all(truth_row[i] == 1 for i in np.flatnonzero(row == 1))


# ---------------------------------------------------------------- voc


def _voc_tree(root: Path) -> Path:
    train = {
        "2008_000003": {"bus": 1},
        "2008_000001": {"aeroplane": 1, "person": 1},
        "2008_000004": {"person": 1},
        "2008_000002": {"dog": 1, "cat": 0},
    }
    val = {"2008_000011": {"tvmonitor": 1, "chair": 0}, "2008_000010": {"sheep": 1}}
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    for phase, table in (("train", train), ("val", val)):
        for cls in VOC_CLASSES:
            lines = [
                f"{image} {' ' if table[image].get(cls, -1) >= 0 else ''}{table[image].get(cls, -1)}" for image in table
            ]
            _write(main / f"{cls}_{phase}.txt", "\n".join(lines) + "\n")
        _touch(root / "VOCdevkit" / "VOC2012" / "JPEGImages", [f"{i}.jpg" for i in table])
    return root


def _voc_row(**positives: int) -> list[float]:
    return [float(positives.get(c, 0)) for c in VOC_CLASSES]


@pytest.mark.parametrize("level", [".", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc(tmp_path, level):
    root = _voc_tree(tmp_path / "raw")
    observed, truth, summary, _ = _convert("voc", root / level, tmp_path / "out")
    assert observed.classes == VOC_CLASSES
    assert observed.images == [f"2008_0000{i}.jpg" for i in ("01", "02", "03", "04", "10", "11")]
    assert observed.splits.tolist() == ["train"] * 3 + ["valid", "test", "test"]
    rows = [
        _voc_row(aeroplane=1, person=1),
        _voc_row(dog=1),
        _voc_row(bus=1),
        _voc_row(person=1),
        _voc_row(sheep=1),
        _voc_row(tvmonitor=1),
    ]
    np.testing.assert_array_equal(truth.store.to_dense(), np.array(rows))
    for i in range(3):
        _assert_single_positive(observed.store.to_dense()[i], rows[i])
    np.testing.assert_array_equal(observed.store.to_dense()[3:], np.array(rows[3:]))
    assert summary.images == {"train": 3, "valid": 1, "test": 2} and summary.classes == 20
    assert (tmp_path / "out" / "images").is_symlink()
    assert (tmp_path / "out" / "images" / "2008_000010.jpg").is_file()


def test_voc_errors(tmp_path):
    root = _voc_tree(tmp_path / "raw")
    with pytest.raises(WsmlError, match=r"no ImageSets/Main found under it; expected ROOT/VOCdevkit/VOC2012"):
        prepare_dataset("voc", tmp_path, tmp_path / "out", log=print)
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    _write(main / "cow_val.txt", "2008_000010 -1\n2008_000011 x\n")
    with pytest.raises(WsmlError, match=r"cow_val.txt: line 2: label 'x' is not an integer"):
        prepare_dataset("voc", root, tmp_path / "out", log=print)
    (main / "dog_train.txt").unlink()
    with pytest.raises(WsmlError, match=r"dog_train.txt: not found; expected ROOT/VOCdevkit/VOC2012/ImageSets"):
        prepare_dataset("voc", root, tmp_path / "out", log=print)


# ---------------------------------------------------------------- coco


def _coco_tree(root: Path) -> Path:
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    content = {
        "train2014": (
            [9, 25, 100, 1000, 30],
            [(9, 1), (9, 1), (9, 18), (25, 3), (100, 18), (1000, 1), (1000, 3)],
        ),
        "val2014": ([42, 7], [(42, 18), (7, 3), (7, 1)]),
    }
    for folder, (ids, pairs) in content.items():
        names = {i: f"COCO_{folder}_{i:012d}.jpg" for i in ids}
        data = {
            "images": [{"id": i, "file_name": names[i], "width": 1} for i in ids],
            "annotations": [{"image_id": i, "category_id": c, "bbox": [0, 0, 1, 1]} for i, c in pairs],
            "categories": categories,
        }
        _write(root / "annotations" / f"instances_{folder}.json", json.dumps(data))
        _touch(root / folder, list(names.values()))
    return root


def test_coco(tmp_path):
    root = _coco_tree(tmp_path / "coco")
    observed, truth, summary, logs = _convert("coco", root, tmp_path / "out")
    assert observed.classes == ["dog", "person", "car"]
    ids = ["100", "1000", "25", "9"]  # sorted as strings; 30 has no annotation
    assert observed.images == [f"train2014/COCO_train2014_{int(i):012d}.jpg" for i in ids] + [
        "val2014/COCO_val2014_000000000042.jpg",
        "val2014/COCO_val2014_000000000007.jpg",
    ]
    assert observed.splits.tolist() == ["train"] * 3 + ["valid", "test", "test"]
    rows = [[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1]]
    np.testing.assert_array_equal(truth.store.to_dense(), np.array(rows))
    np.testing.assert_array_equal(observed.store.to_dense()[[0, 2]], [[1, E, E], [E, E, 1]])
    _assert_single_positive(observed.store.to_dense()[1], rows[1])
    np.testing.assert_array_equal(observed.store.to_dense()[3:], np.array(rows[3:]))
    assert "instances_train2014.json: dropped 1 images without annotations" in logs
    assert summary.mean_positives == pytest.approx(9 / 6)
    images = tmp_path / "out" / "images"
    assert not images.is_symlink() and (images / "train2014").is_symlink()
    assert (images / "val2014" / "COCO_val2014_000000000007.jpg").is_file()


def test_coco_errors(tmp_path):
    root = _coco_tree(tmp_path / "coco")
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"image_id": 42, "category_id": 99})
    path.write_text(json.dumps(data))
    with pytest.raises(WsmlError, match="instances_val2014.json: annotations refer to category id 99"):
        prepare_dataset("coco", root, tmp_path / "out", log=print)
    path.write_text("{")
    with pytest.raises(WsmlError, match="instances_val2014.json: not valid JSON"):
        prepare_dataset("coco", root, tmp_path / "out", log=print)
    path.unlink()
    with pytest.raises(WsmlError, match=r"instances_val2014.json: not found; expected ROOT/annotations/instances_"):
        prepare_dataset("coco", root, tmp_path / "out", log=print)


# ---------------------------------------------------------------- nuswide


NUS_IMAGES = [  # ImageList order, the row order the converter must keep
    "actor/0001_1.jpg",
    "beach/0002_2.jpg",
    "beach/0003_3.jpg",
    "zoo/0004_4.jpg",
    "sky/0005_5.jpg",
    "zoo/0006_6.jpg",
]


def _nus_tree(root: Path, concepts_file: bool = True) -> Path:
    if concepts_file:
        _write(root / "Concepts81.txt", "sky\nanimal\nwater\n")
    train = [
        "actor\\0001_1.jpg",
        "beach\\0002_2.jpg",
        "beach\\0003_3.jpg",
        "C:\\ImageData\\Flickr\\zoo\\0004_4.jpg",
    ]
    _write(root / "ImageList" / "TrainImagelist.txt", "\r\n".join(train) + "\r\n")
    _write(root / "ImageList" / "TestImagelist.txt", "sky\\0005_5.jpg\nzoo\\0006_6.jpg\n")
    labels = {
        "Train": {"sky": [0, 1, 1, 0], "animal": [0, 0, 0, 1], "water": [0, 1, 0, 0]},
        "Test": {"sky": [1, 0], "animal": [0, 1], "water": [0, 0]},
    }
    for phase, columns in labels.items():
        for concept, values in columns.items():
            _write(
                root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{phase}.txt",
                "".join(f"{v} \n" for v in values),
            )
    _touch(root / "Flickr", NUS_IMAGES)
    return root


def test_nuswide(tmp_path):
    observed, truth, summary, _ = _convert("nuswide", _nus_tree(tmp_path / "nus"), tmp_path / "out")
    assert observed.classes == ["sky", "animal", "water"]
    assert observed.images == NUS_IMAGES
    rows = [[0, 0, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]]
    np.testing.assert_array_equal(truth.store.to_dense(), np.array(rows))
    np.testing.assert_array_equal(observed.store.to_dense()[[0, 2]], [[E, E, E], [1, E, E]])
    _assert_single_positive(observed.store.to_dense()[1], rows[1])
    np.testing.assert_array_equal(observed.store.to_dense()[3:], np.array(rows[3:]))
    assert summary.without_positives == 1 and summary.mean_positives == pytest.approx(1.0)


def test_nuswide_sorted_concepts_and_errors(tmp_path):
    root = _nus_tree(tmp_path / "nus", concepts_file=False)
    observed, _, _, _ = _convert("nuswide", root, tmp_path / "out")
    assert observed.classes == ["animal", "sky", "water"]
    _write(root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt", "1\n")
    with pytest.raises(WsmlError, match="Labels_sky_Test.txt: 1 labels for 2 images in the image list"):
        prepare_dataset("nuswide", root, tmp_path / "out2", log=print)
    (root / "ImageList" / "TestImagelist.txt").unlink()
    with pytest.raises(WsmlError, match=r"TestImagelist.txt: not found; expected ROOT/ImageList/"):
        prepare_dataset("nuswide", root, tmp_path / "out2", log=print)


# ---------------------------------------------------------------- cub

CUB_TRUTH = {1: [1, 0, 1], 2: [0, 1, 0], 3: [0, 0, 1], 4: [1, 1, 0], 5: [0, 1, 1]}
CUB_PATHS = {1: "001.A/a1.jpg", 2: "001.A/a2.jpg", 3: "002.B/b1.jpg", 4: "002.B/b2.jpg", 5: "002.B/b3.jpg"}


def _cub_tree(base: Path, attributes_at: Path) -> None:
    _write(base / "images.txt", "".join(f"{i} {p}\n" for i, p in CUB_PATHS.items()))
    _write(base / "train_test_split.txt", "1 1\n2 0\n3 1\n4 1\n5 1\n")
    names = "1 has_bill_shape::curved_(up_or_down)\n2 has_wing_color::blue\n3 has_size::small\n"
    _write(attributes_at / "attributes.txt", names)
    lines = [f"{i} {a + 1} {v} 3 12.5" for i, row in CUB_TRUTH.items() for a, v in enumerate(row)]
    lines[4] += " 0.5"  # some real lines carry an extra field
    _write(base / "attributes" / "image_attribute_labels.txt", "\n".join(lines) + "\n")
    _touch(base / "images", list(CUB_PATHS.values()))


@pytest.mark.parametrize("layout", ["nested", "single", "itself"])
def test_cub(tmp_path, layout):
    top = tmp_path / "cub"
    base = {"nested": top / "CUB_200_2011" / "CUB_200_2011", "single": top / "CUB_200_2011", "itself": top}[layout]
    _cub_tree(base, base.parent if layout != "itself" else base)
    observed, truth, summary, _ = _convert("cub", top, tmp_path / "out")
    assert observed.classes == [
        "has_bill_shape::curved_(up_or_down)",
        "has_wing_color::blue",
        "has_size::small",
    ]
    order = [1, 3, 4, 5, 2]
    assert observed.images == [CUB_PATHS[i] for i in order]
    assert observed.splits.tolist() == ["train"] * 3 + ["valid", "test"]
    np.testing.assert_array_equal(truth.store.to_dense(), np.array([CUB_TRUTH[i] for i in order]))
    np.testing.assert_array_equal(observed.store.to_dense()[1], [E, E, 1])
    for row in (0, 2):
        _assert_single_positive(observed.store.to_dense()[row], CUB_TRUTH[order[row]])
    np.testing.assert_array_equal(observed.store.to_dense()[3:], [CUB_TRUTH[5], CUB_TRUTH[2]])
    assert summary.classes == 3


def test_cub_errors(tmp_path):
    base = tmp_path / "CUB_200_2011"
    _cub_tree(base, base)
    labels = base / "attributes" / "image_attribute_labels.txt"
    labels.write_text("1 1 1 3 1\n1 2 x 3 1\n")
    with pytest.raises(WsmlError, match=r"image_attribute_labels.txt: line 2: is_present 'x' is not an integer"):
        prepare_dataset("cub", tmp_path, tmp_path / "out", log=print)
    labels.write_text("1 1 1 3 1\n1 2\n")
    with pytest.raises(WsmlError, match=r"image_attribute_labels.txt: line 2 has fewer than 3 fields"):
        prepare_dataset("cub", tmp_path, tmp_path / "out", log=print)
    (base / "attributes.txt").unlink()
    with pytest.raises(WsmlError, match=r"attributes.txt: not found; expected ROOT/CUB_200_2011/"):
        prepare_dataset("cub", tmp_path, tmp_path / "out", log=print)


# ---------------------------------------------------------------- openimages

OI_HEADER = "ImageID,Source,LabelName,Confidence\n"


def _oi_tree(root: Path, header: bool, v6: bool) -> Path:
    descriptions = '/m/01,Cat\n/m/02,Dog\n/m/03,"Car, red"\n/m/04,Cat\n/m/05,Unused\n'
    _write(root / "class-descriptions.csv", ("LabelName,DisplayName\n" if header else "") + descriptions)
    train = (
        "b2,verification,/m/02,1\na1,verification,/m/01,1\na1,verification,/m/02,0\n"
        "a1,crowdsource-verification,/m/02,1\nb2,verification,/m/03,0\nc3,verification,/m/04,0\n"
    )
    train_path = root / (
        "oidv6-train-annotations-human-imagelabels.csv" if v6 else "train/train-annotations-human-imagelabels.csv"
    )
    _write(train_path, OI_HEADER + train)
    _write(
        root / "validation" / "validation-annotations-human-imagelabels.csv",
        OI_HEADER + "v1,verification,/m/01,1\nv1,verification,/m/99,0\n",
    )
    _touch(root, ["train/a1.jpg", "train/b2.jpg", "train/c3.jpg", "validation/v1.jpg"])
    return root


@pytest.mark.parametrize(("header", "v6"), [(False, False), (True, True)])
def test_openimages(tmp_path, header, v6):
    root = _oi_tree(tmp_path / "oi", header, v6)
    observed, truth, summary, logs = _convert("openimages", root, tmp_path / "out")
    assert truth is None and (tmp_path / "out" / "classes.txt").is_file()
    assert observed.classes == ["Cat (/m/01)", "Dog", "Car, red", "Cat (/m/04)", "/m/99"]
    assert observed.images == ["train/a1.jpg", "train/b2.jpg", "train/c3.jpg", "validation/v1.jpg"]
    assert observed.splits.tolist() == ["train"] * 3 + ["valid"]
    expected = [[1, 1, E, E, E], [E, 1, 0, E, E], [E, E, E, 0, E], [1, E, E, E, 0]]
    np.testing.assert_array_equal(observed.store.to_dense(), np.array(expected))
    assert any("1 labels listed with both confidences; kept them positive" in m for m in logs)
    assert summary.images == {"train": 3, "valid": 1, "test": 0}
    assert summary.without_positives == 1 and summary.mean_positives == pytest.approx(1.0)
    assert (tmp_path / "out" / "images" / "validation" / "v1.jpg").is_file()


def test_openimages_errors(tmp_path):
    with pytest.raises(WsmlError, match=r"no \*-human-imagelabels.csv found; expected ROOT/class-descriptions"):
        prepare_dataset("openimages", tmp_path, tmp_path / "out", log=print)
    root = _oi_tree(tmp_path / "oi", header=False, v6=False)
    _write(root / "validation" / "validation-annotations-human-imagelabels.csv", OI_HEADER + "v1,x,/m/01,0.5\n")
    with pytest.raises(WsmlError, match=r"validation-annotations-human-imagelabels.csv: line 2: Confidence '0.5'"):
        prepare_dataset("openimages", root, tmp_path / "out", log=print)
    _write(root / "validation" / "validation-annotations-human-imagelabels.csv", "ImageID,LabelName\nv1,/m/01\n")
    with pytest.raises(WsmlError, match=r"needs columns ImageID, LabelName, Confidence"):
        prepare_dataset("openimages", root, tmp_path / "out", log=print)
    (root / "class-descriptions.csv").unlink()
    with pytest.raises(WsmlError, match=r"class-descriptions.csv: not found; expected ROOT/class-descriptions.csv"):
        prepare_dataset("openimages", root, tmp_path / "out", log=print)


# ---------------------------------------------------------------- npy

NPY_TRAIN = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float64)
NPY_VAL = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.float64)


def _npy_tree(root: Path, with_obs: bool) -> Path:
    root.mkdir(parents=True)
    np.save(root / "formatted_train_images.npy", np.array(["x/a.jpg", "x/b.jpg", "x/c.jpg", "x/d.jpg"]))
    np.save(root / "formatted_train_labels.npy", NPY_TRAIN)
    np.save(root / "formatted_val_images.npy", np.array(["y/e.jpg", "y/f.jpg"]))
    np.save(root / "formatted_val_labels.npy", NPY_VAL)
    if with_obs:
        np.save(root / "formatted_train_labels_obs.npy", np.array([[0, -1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1.0]]))
    _touch(root / "imgs", ["x/a.jpg", "x/b.jpg", "x/c.jpg", "x/d.jpg", "y/e.jpg", "y/f.jpg"])
    return root


def test_npy_with_given_observed_labels(tmp_path):
    root = _npy_tree(tmp_path / "npy", with_obs=True)
    observed, truth, _, logs = _convert("npy", root, tmp_path / "out", image_root=root / "imgs")
    assert observed.classes == ["class_0", "class_1", "class_2"]
    assert observed.images == ["x/a.jpg", "x/b.jpg", "x/c.jpg", "x/d.jpg", "y/e.jpg", "y/f.jpg"]
    expected = [[E, 0, 1], [E, 1, E], [1, E, E], [0, 0, 1], [0, 1, 1], [1, 0, 0]]
    np.testing.assert_array_equal(observed.store.to_dense(), np.array(expected))
    np.testing.assert_array_equal(truth.store.to_dense(), np.concatenate([NPY_TRAIN, NPY_VAL]))
    assert any("using the given formatted_train observed labels" in m for m in logs)


def test_npy_reference_protocol_end_to_end(tmp_path):
    root = _npy_tree(tmp_path / "npy", with_obs=False)
    (root / "classes.txt").write_text("a\nb\nc\n")
    observed, _, _, _ = _convert("npy", root, tmp_path / "out", image_root=root / "imgs", protocol="reference", seed=5)
    assert observed.classes == ["a", "b", "c"]
    # The reference observes the whole official train set in file order, then splits it.
    rs = np.random.RandomState(5)
    chosen = []
    for row in NPY_TRAIN[:3]:
        positives = np.flatnonzero(row == 1)
        rs.shuffle(positives)
        rs.shuffle(np.flatnonzero(row == 0))
        chosen.append(positives[0])
    for i, column in enumerate(chosen):
        assert np.flatnonzero(observed.store.to_dense()[i] != E).tolist() == [column]


def test_npy_errors(tmp_path):
    root = _npy_tree(tmp_path / "npy", with_obs=False)
    np.save(root / "formatted_val_labels.npy", np.array([[0, 2, 1], [1, 0, 0]]))
    with pytest.raises(WsmlError, match="formatted_val_labels.npy: values must be 0 or 1"):
        prepare_dataset("npy", root, tmp_path / "out", log=print)
    (root / "formatted_val_labels.npy").unlink()
    with pytest.raises(WsmlError, match=r"formatted_val_labels.npy: not found; expected ROOT/formatted_"):
        prepare_dataset("npy", root, tmp_path / "out", log=print)


# ---------------------------------------------------------------- csv


def test_csv_with_own_splits(tmp_path):
    _touch(tmp_path / "pics", ["a.png", "b.png", "c.png"])
    path = _write(tmp_path / "mine.csv", "image,split,red,blue\na.png,train,1,0\nb.png,test,0,1\nc.png,valid,1,1\n")
    observed, truth, summary, _ = _convert("csv", path, tmp_path / "out", image_root=tmp_path / "pics")
    assert observed.images == ["a.png", "c.png", "b.png"]
    assert observed.splits.tolist() == ["train", "valid", "test"]
    np.testing.assert_array_equal(observed.store.to_dense(), [[1, E], [1, 1], [0, 1]])
    np.testing.assert_array_equal(truth.store.to_dense(), [[1, 0], [1, 1], [0, 1]])


def test_csv_errors(tmp_path):
    with pytest.raises(WsmlError, match="labels.csv: not found; expected a CSV file"):
        prepare_dataset("csv", tmp_path, tmp_path / "out", log=print)
    path = _write(tmp_path / "labels.csv", "image,red\na.png,\n")
    with pytest.raises(WsmlError, match="labels.csv: line 2 .* is not 1 or 0"):
        prepare_dataset("csv", path, tmp_path / "out", log=print)
