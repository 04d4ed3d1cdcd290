"""MS-COCO 2014 object categories as image labels.

Layout: ROOT/annotations/instances_{train,val}2014.json (images[{id,file_name}],
annotations[{image_id,category_id}], categories[{id,name}]) and images in ROOT/{train,val}2014/.
Official train -> train/valid, official val -> test. Images with no annotation are dropped, as in the
reference, and rows are ordered by image id compared as strings (the reference's order). For the salient single
positives, `read_boxes` takes each annotation's `bbox` [x, y, width, height] and `area`, and each image's
`width` and `height`, from the train file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare.salient import Objects
from wsml_fast.prepare.source import Part, RawDataset
from wsml_fast.prepare.textfiles import need

LAYOUT = "ROOT/annotations/instances_{train,val}2014.json and images in ROOT/{train,val}2014/"
TRAIN = ("train", "train2014")
TEST = ("test", "val2014")


def _path(root: Path, folder: str) -> Path:
    return root / "annotations" / f"instances_{folder}.json"


def _load(path: Path) -> dict:
    try:
        with need(path, LAYOUT).open() as handle:
            data = json.load(handle)
        return {key: data[key] for key in ("images", "annotations", "categories")}
    except json.JSONDecodeError as exc:
        raise WsmlError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (KeyError, TypeError) as exc:
        raise WsmlError(f"{path}: no '{exc.args[0]}' list; expected a COCO instances file") from None


def _field(path: Path, items: list, key: str, what: str) -> list:
    try:
        return [item[key] for item in items]
    except (KeyError, TypeError):
        raise WsmlError(f"{path}: an entry of '{what}' has no '{key}'") from None


def _part(path: Path, folder: str, data: dict, category_ids: list) -> tuple[Part, int]:
    """The labels of one annotation file, and how many of its images had no annotation."""
    file_names = dict(
        zip(
            map(str, _field(path, data["images"], "id", "images")),
            _field(path, data["images"], "file_name", "images"),
            strict=True,
        )
    )
    image_ids = [str(i) for i in _field(path, data["annotations"], "image_id", "annotations")]
    categories = _field(path, data["annotations"], "category_id", "annotations")
    rows = sorted(set(image_ids))
    unknown = [r for r in rows if r not in file_names]
    if unknown:
        raise WsmlError(f"{path}: annotations refer to image id {unknown[0]}, which is not in 'images'")
    col_of = {c: i for i, c in enumerate(category_ids)}
    bad = [c for c in categories if c not in col_of]
    if bad:
        raise WsmlError(f"{path}: annotations refer to category id {bad[0]}, which is not in 'categories'")
    row_of = {r: i for i, r in enumerate(rows)}
    truth = np.zeros((len(rows), len(category_ids)), dtype=np.float32)
    truth[[row_of[i] for i in image_ids], [col_of[c] for c in categories]] = 1.0
    return Part([f"{folder}/{file_names[r]}" for r in rows], truth=truth), len(file_names) - len(rows)


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Parse both instance files; their category lists must agree."""
    parts, notes, classes = {}, [], None
    for split, folder in (TRAIN, TEST):
        path = _path(root, folder)
        data = _load(path)
        categories = data["categories"]
        names = _field(path, categories, "name", "categories")
        if classes is not None and names != classes:
            raise WsmlError(f"{path}: its categories differ from those of instances_train2014.json")
        classes = names
        parts[split], dropped = _part(path, folder, data, _field(path, categories, "id", "categories"))
        notes.append(f"{path.name}: dropped {dropped} images without annotations")
    links = {folder: (image_root or root) / folder for folder in ("train2014", "val2014")}
    return RawDataset(classes, links, parts, notes)


def _numbers(path: Path, items: list, key: str, what: str, width: int) -> np.ndarray:
    """Field `key` of every entry as numbers, `width` per entry, failing on the first entry without them."""
    values = _field(path, items, key, what)
    try:
        array = np.asarray(values, dtype=np.float64).reshape(len(values), width)
    except (TypeError, ValueError):
        array = None
    if array is None or not np.isfinite(array).all() or (array < 0).any():
        raise WsmlError(f"{path}: an entry of '{what}' has a '{key}' that is not {width} non-negative number(s)")
    return array


def read_boxes(root: Path, images: list[str]) -> Objects:
    """The objects of the official train file's images among `images` (the train rows `read` made), by row."""
    path = _path(root, TRAIN[1])
    data = _load(path)
    listed, annotations = data["images"], data["annotations"]
    position = {image_id: i for i, image_id in enumerate(_field(path, listed, "id", "images"))}
    names = _field(path, listed, "file_name", "images")
    sizes = np.column_stack([_numbers(path, listed, key, "images", 1) for key in ("width", "height")])
    row_of = {name: row for row, name in enumerate(images)}
    where = [position[i] for i in _field(path, annotations, "image_id", "annotations")]
    column_of = {c: i for i, c in enumerate(_field(path, data["categories"], "id", "categories"))}
    boxes = _numbers(path, annotations, "bbox", "annotations", 4)
    boxes[:, 2:] += boxes[:, :2]  # [x, y, width, height] -> corners
    rows = np.array([row_of.get(f"{TRAIN[1]}/{names[i]}", -1) for i in where], dtype=np.int64)
    return Objects.from_boxes(
        rows=rows,
        columns=np.array([column_of[c] for c in _field(path, annotations, "category_id", "annotations")]),
        boxes=boxes,
        sizes=sizes[where],
        areas=_numbers(path, annotations, "area", "annotations", 1)[:, 0],
    ).take(rows >= 0)
