"""Salient single positives: the draw follows object areas or centre distances, read from COCO and VOC trees with
boxes in their real formats; it is seeded and recorded, and the formats without boxes refuse it in one line."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import error_of

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import read_label_csv
from wsml_fast.prepare import prepare_dataset
from wsml_fast.prepare.coco import read_boxes as coco_boxes
from wsml_fast.prepare.salient import CENTRED, Objects, draw_salient
from wsml_fast.prepare.voc import CLASSES as VOC_CLASSES
from wsml_fast.prepare.voc import read_boxes as voc_boxes

COPIES = 100  # identical train images in the COCO tree: 80 stay train after the 80/20 split; 5 seeds
VOC_COPIES = 200  # in the VOC tree: 160 train rows; 2 seeds (each run reads the 40 class files again)


def _quiet(_: str) -> None:
    pass


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\xff\xd8\xff\xd9")


def _drawn(out: Path) -> np.ndarray:
    """The column of each train row's one observed positive."""
    observed = read_label_csv(out / "observed.csv")
    train = observed.store.to_dense()[observed.splits == "train"]
    assert ((train == 1).sum(axis=1) == 1).all() and set(np.unique(train)) == {-1.0, 1.0}
    return np.argmax(train == 1, axis=1)


def _share(name: str, root: Path, tmp_path: Path, kind: str, column: int, seeds: range) -> float:
    """How often `column` is drawn over the train rows of runs with `seeds`."""
    drawn = [
        _drawn(
            prepare_dataset(
                name, root, tmp_path / f"{kind}{s}", observed=f"single-positive:{kind}", seed=s, log=_quiet
            ).out
        )
        for s in seeds
    ]
    return float(np.mean(np.concatenate(drawn) == column))


def _tolerance(p: float, n: int) -> float:
    return 4 * np.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- the draw itself


def test_draw_follows_the_weights_per_image():
    rows = 20000
    # per image: class 0 one object of area 300; class 1 two objects of 60 and 40 (sum 100); class 2 area 0
    objects = Objects(
        rows=np.repeat(np.arange(rows), 4),
        columns=np.tile([1, 0, 2, 1], rows),
        areas=np.tile([60.0, 300.0, 0.0, 40.0], rows),
        distances=np.tile([10.0, 30.0, 5.0, 1e9], rows),
    )
    drawn = draw_salient(objects, rows + 1, "size", seed=0)
    assert drawn[-1] == -1  # an image without objects gets none
    size = np.bincount(drawn[:-1], minlength=3) / rows
    assert size[2] == 0  # a zero area is never drawn
    assert abs(size[0] - 0.75) < _tolerance(0.75, rows)
    location = np.bincount(draw_salient(objects, rows, "location", seed=0), minlength=3) / rows
    inverse = np.array([1 / 30, 1 / 10 + 1e-9, 1 / 5])
    np.testing.assert_allclose(location, inverse / inverse.sum(), atol=_tolerance(0.5, rows))
    np.testing.assert_array_equal(drawn, draw_salient(objects, rows + 1, "size", seed=0))
    assert (drawn != draw_salient(objects, rows + 1, "size", seed=1)).any()


def test_big_object_drawn_much_more_often_and_centred_one_weighs_the_floor():
    rows = 5000
    objects = Objects(
        rows=np.repeat(np.arange(rows), 2),
        columns=np.tile([0, 1], rows),
        areas=np.tile([90000.0, 100.0], rows),
        distances=np.tile([0.0, 1.0], rows),
    )
    assert np.mean(draw_salient(objects, rows, "size", seed=3) == 0) > 0.99
    np.testing.assert_array_equal(objects.weights("location"), np.tile([1 / CENTRED, 1.0], rows))


def test_draw_memory_is_per_object_not_per_image_and_class():
    rows, classes = 2000, 50000  # a dense rows x classes float32 matrix would be 400 MB
    generator = np.random.default_rng(0)
    objects = Objects(
        rows=np.repeat(np.arange(rows), 3),
        columns=generator.integers(0, classes, 3 * rows),
        areas=generator.random(3 * rows),
        distances=generator.random(3 * rows),
    )
    tracemalloc.start()
    draw_salient(objects, rows, "size", seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000


# ---------------------------------------------------------------- coco


def _coco_image(image_id: int, folder: str) -> dict:
    name = f"COCO_{folder}_{image_id:012d}.jpg"
    return {
        "license": 3,
        "file_name": name,
        "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
        "height": 480,
        "width": 640,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": "http://farm3.staticflickr.com/2567/3908183003_ed7ab0e1d6_z.jpg",
        "id": image_id,
    }


def _coco_object(number: int, image_id: int, category: int, bbox: list[float], area: float) -> dict:
    x, y, w, h = bbox
    return {
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        "area": area,
        "iscrowd": 0,
        "image_id": image_id,
        "bbox": bbox,
        "category_id": category,
        "id": number,
    }


# Per train image (640 x 480, centre (320, 240)): a dog of area 3000 (its box 60 x 60) centred 10 px right of the
# image centre; two persons of areas 600 and 400 centred 60 px away. Size: dog 3000 / 4000 = 0.75 (the boxes'
# areas would give 3600 / 5400). Location: dog 1/10 against persons 1/60 + 1/60: again 0.75.
COCO_OBJECTS = [(18, [300.0, 210.0, 60.0, 60.0], 3000.0), (1, [365.0, 225.0, 30.0, 30.0], 600.0)]
COCO_OBJECTS.append((1, [305.0, 285.0, 30.0, 30.0], 400.0))


def _coco_tree(root: Path) -> Path:
    categories = [
        {"supercategory": "animal", "id": 18, "name": "dog"},
        {"supercategory": "person", "id": 1, "name": "person"},
        {"supercategory": "vehicle", "id": 3, "name": "car"},
    ]
    ids = {"train2014": list(range(1, COPIES + 1)), "val2014": [5001, 5002]}
    for folder, image_ids in ids.items():
        objects = COCO_OBJECTS if folder == "train2014" else [(3, [10.0, 10.0, 50.0, 40.0], 1500.0)]
        annotations = [
            _coco_object(len(objects) * i + k, image_id, *obj)
            for i, image_id in enumerate(image_ids)
            for k, obj in enumerate(objects)
        ]
        data = {
            "info": {"description": "COCO 2014 Dataset", "version": "1.0", "year": 2014},
            "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 3, "name": "Attribution"}],
            "images": [_coco_image(i, folder) for i in image_ids],
            "annotations": annotations,
            "categories": categories,
        }
        _write(root / "annotations" / f"instances_{folder}.json", json.dumps(data))
        _touch(root / folder, [image["file_name"] for image in data["images"]])
    return root


def test_coco_objects_read_from_area_bbox_and_image_size(tmp_path):
    root = _coco_tree(tmp_path / "coco")
    images = [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (2, 1)] + ["train2014/other.jpg"]
    objects = coco_boxes(root, images)
    first = objects.rows == 1  # image id 1 is the second row of `images`
    np.testing.assert_array_equal(objects.columns[first], [0, 1, 1])
    np.testing.assert_array_equal(objects.areas[first], [3000, 600, 400])
    np.testing.assert_allclose(objects.distances[first], [10, 60, 60])


@pytest.mark.parametrize("kind", ["size", "location"])
def test_coco_draw_follows_the_protocol(tmp_path, kind):
    root = _coco_tree(tmp_path / "coco")
    share = _share("coco", root, tmp_path, kind, column=0, seeds=range(5))
    assert abs(share - 0.75) < _tolerance(0.75, 80 * 5)


def test_coco_draw_is_seeded_and_recorded(tmp_path):
    root = _coco_tree(tmp_path / "coco")
    runs = [
        prepare_dataset("coco", root, tmp_path / name, observed="single-positive:size", seed=seed, log=_quiet).out
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    texts = [(out / "observed.csv").read_text() for out in runs]
    assert texts[0] == texts[1] and texts[0] != texts[2]
    record = json.loads((runs[0] / "prepare.json").read_text())
    assert record == {"format": "coco", "observed": "single-positive:size", "seed": 7, "protocol": "wsml"}
    observed = read_label_csv(runs[0] / "observed.csv")
    test = observed.store.to_dense()[observed.splits == "test"]
    np.testing.assert_array_equal(test, [[0, 0, 1], [0, 0, 1]])  # evaluation rows keep their full truth


def test_coco_without_boxes_or_with_only_empty_areas(tmp_path):
    root = _coco_tree(tmp_path / "coco")
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    for annotation in data["annotations"]:
        if annotation["image_id"] == 1:
            annotation["area"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(WsmlError, match=r"COCO_train2014_000000000001.jpg: every object .* has area 0"):
        prepare_dataset("coco", root, tmp_path / "out", observed="single-positive:size", log=_quiet)
    prepare_dataset("coco", root, tmp_path / "out", observed="single-positive:location", log=_quiet)
    del data["annotations"][5]["bbox"]
    path.write_text(json.dumps(data))
    with pytest.raises(WsmlError, match=r"instances_train2014.json: an entry of 'annotations' has no 'bbox'"):
        prepare_dataset("coco", root, tmp_path / "again", observed="single-positive:location", log=_quiet)
    prepare_dataset("coco", root, tmp_path / "uniform", log=_quiet)  # the uniform draw needs no boxes


# ---------------------------------------------------------------- voc


def _voc_object(name: str, box: tuple[int, int, int, int], difficult: int = 0, part: str = "") -> str:
    xmin, ymin, xmax, ymax = box
    return f"""
\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{xmin}</xmin>
\t\t\t<ymin>{ymin}</ymin>
\t\t\t<xmax>{xmax}</xmax>
\t\t\t<ymax>{ymax}</ymax>
\t\t</bndbox>{part}
\t</object>"""


def _voc_xml(image_id: str, objects: str) -> str:
    return f"""<annotation>
\t<folder>VOC2012</folder>
\t<filename>{image_id}.jpg</filename>
\t<source>
\t\t<database>The VOC2008 Database</database>
\t\t<annotation>PASCAL VOC2008</annotation>
\t\t<image>flickr</image>
\t</source>
\t<size>
\t\t<width>500</width>
\t\t<height>400</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>{objects}
</annotation>
"""


HEAD = """
\t\t<part>
\t\t\t<name>head</name>
\t\t\t<bndbox>
\t\t\t\t<xmin>1</xmin>
\t\t\t\t<ymin>1</ymin>
\t\t\t\t<xmax>500</xmax>
\t\t\t\t<ymax>400</ymax>
\t\t\t</bndbox>
\t\t</part>"""

# Per train image (500 x 400, centre (250, 200) in pixel edges): an aeroplane of 90 x 100 px = 9000 centred 50 px
# left of the centre; a person of 30 x 100 px = 3000 centred 150 px right (its head <part> spans the whole image
# and is no object); a difficult cat (the class file says 0), never drawn. Size: 9000 / 12000 = 0.75. Location:
# 1/50 against 1/150: again 0.75.
VOC_OBJECTS = (
    _voc_object("aeroplane", (156, 151, 245, 250))
    + _voc_object("person", (386, 151, 415, 250), part=HEAD)
    + _voc_object("cat", (1, 1, 500, 400), difficult=1)
)


def _voc_tree(root: Path, annotations: bool = True, copies: int = VOC_COPIES) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    phases = {"train": [f"2008_{i:06d}" for i in range(1, copies + 1)], "val": ["2009_000001"]}
    labels = {"train": {"aeroplane": 1, "person": 1, "cat": 0}, "val": {"dog": 1}}
    for phase, image_ids in phases.items():
        for cls in VOC_CLASSES:
            label = labels[phase].get(cls, -1)
            _write(base / "ImageSets" / "Main" / f"{cls}_{phase}.txt", "".join(f"{i} {label:2d}\n" for i in image_ids))
        _touch(base / "JPEGImages", [f"{i}.jpg" for i in image_ids])
        if annotations:
            objects = VOC_OBJECTS if phase == "train" else _voc_object("dog", (10, 10, 60, 60))
            for image_id in image_ids:
                _write(base / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, objects))
    return root


def test_voc_objects_read_from_the_xml(tmp_path):
    root = _voc_tree(tmp_path / "voc", copies=2)
    objects = voc_boxes(root, ["2008_000002.jpg"])
    names = ["aeroplane", "person", "cat"]
    np.testing.assert_array_equal(objects.columns, [VOC_CLASSES.index(n) for n in names])
    np.testing.assert_array_equal(objects.areas, [9000, 3000, 200000])
    np.testing.assert_allclose(objects.distances, [50, 150, 0])


@pytest.mark.parametrize("kind", ["size", "location"])
def test_voc_draw_follows_the_protocol(tmp_path, kind):
    root = _voc_tree(tmp_path / "voc")
    share = _share("voc", root, tmp_path, kind, column=VOC_CLASSES.index("aeroplane"), seeds=range(2))
    assert abs(share - 0.75) < _tolerance(0.75, 160 * 2)  # and the difficult cat, first in
    # size and location alike, is never drawn: `_drawn` found one positive per row, and it is a true positive


def test_voc_errors(tmp_path):
    root = _voc_tree(tmp_path / "voc", copies=5)
    xml = root / "VOCdevkit" / "VOC2012" / "Annotations" / "2008_000003.xml"
    xml.write_text(_voc_xml("2008_000003", _voc_object("person", (386, 151, 415, 250))))
    with pytest.raises(WsmlError, match=r"2008_000003.jpg: labelled 'aeroplane' but its annotations hold no box"):
        prepare_dataset("voc", root, tmp_path / "out", observed="single-positive:size", log=_quiet)
    xml.write_text("<annotation><size>")
    with pytest.raises(WsmlError, match=r"2008_000003.xml: not valid XML"):
        voc_boxes(root, ["2008_000003.jpg"])
    xml.write_text(_voc_xml("2008_000003", _voc_object("horse", (5, 5, 3, 50))))
    with pytest.raises(WsmlError, match=r"2008_000003.xml: object 'horse' has a <bndbox> whose max is below its min"):
        voc_boxes(root, ["2008_000003.jpg"])
    xml.unlink()
    with pytest.raises(WsmlError, match=r"2008_000003.xml: not found; expected an Annotations/\{image_id\}.xml"):
        voc_boxes(root, ["2008_000003.jpg"])


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["nuswide", "cub", "openimages", "npy", "csv"])
def test_formats_without_boxes_refuse_in_one_line(tmp_path, name):
    message = error_of(
        "prepare", name, "--root", tmp_path, "--out", tmp_path / "out", "--observed", "single-positive:size"
    )
    assert f"--observed single-positive:size: the {name} converter has image-level labels only, no object" in message
    assert not (tmp_path / "out").exists()


def test_voc_without_annotations_and_the_reference_protocol_refuse(tmp_path):
    root = _voc_tree(tmp_path / "voc", annotations=False, copies=5)
    message = error_of(
        "prepare", "voc", "--root", root, "--out", tmp_path / "o", "--observed", "single-positive:location"
    )
    assert "VOC2012/Annotations: not found; the voc converter draws salient single positives" in message
    with pytest.raises(WsmlError, match=r"--protocol reference replays the uniform .* drop --protocol reference"):
        prepare_dataset("voc", root, tmp_path / "r", observed="single-positive:size", protocol="reference", log=_quiet)
