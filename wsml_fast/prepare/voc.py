"""PASCAL VOC 2012 classification labels.

Layout (ROOT may also be VOCdevkit or VOC2012 itself):
ROOT/VOCdevkit/VOC2012/ImageSets/Main/{class}_{train,val}.txt  lines `image_id label`, label 1, -1 or
0 (difficult; only 1 counts as positive), and ROOT/VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg.
Official train -> train/valid, official val -> test. Rows sorted by file name, as in the reference.
The salient single positives read ROOT/VOCdevkit/VOC2012/Annotations/{image_id}.xml: the image's <size> and each
<object>'s <name> and <bndbox> (1-based inclusive pixel corners; a person's <part> boxes are not objects).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare.salient import Objects
from wsml_fast.prepare.source import Part, RawDataset
from wsml_fast.prepare.textfiles import find_base, first_duplicate, need, read_fields

CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()
LAYOUT = "ROOT/VOCdevkit/VOC2012/ImageSets/Main/{class}_{train,val}.txt and ROOT/VOCdevkit/VOC2012/JPEGImages/"
MAIN = "ImageSets/Main"
ANNOTATIONS = "Annotations"
CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _base(root: Path) -> Path:
    return find_base(root, ("VOCdevkit/VOC2012", "VOC2012", "."), MAIN, LAYOUT)


def _class_labels(path: Path) -> pd.Series:
    """image id -> label (1, -1 or 0) of one class file."""
    frame = read_fields(need(path, LAYOUT), ("image_id", "label"), integer=("label",))
    bad = np.flatnonzero(~frame["label"].isin((1, -1, 0)).to_numpy())
    if bad.size:
        line = frame.index[bad[0]]
        raise WsmlError(f"{path}: line {line}: label {frame['label'].iloc[bad[0]]} is not 1, -1 or 0")
    first_duplicate(path, frame["image_id"], "image id")
    return frame.set_index("image_id")["label"]


def _part(main: Path, phase: str) -> Part:
    labels = pd.concat({c: _class_labels(main / f"{c}_{phase}.txt") for c in CLASSES}, axis=1)
    labels = labels.sort_index()
    truth = (labels == 1).to_numpy(dtype=np.float32)
    return Part([f"{image_id}.jpg" for image_id in labels.index], truth=truth)


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Parse the per-class train/val lists of VOC 2012 (an image absent from a class file is negative)."""
    main = _base(root) / MAIN
    parts = {split: _part(main, phase) for split, phase in (("train", "train"), ("test", "val"))}
    return RawDataset(list(CLASSES), {"": image_root or main.parent.parent / "JPEGImages"}, parts)


def _number(path: Path, node: ElementTree.Element, tag: str) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise WsmlError(f"{path}: <{node.tag}> has no number in <{tag}> (found {text!r})") from None


def _image_objects(path: Path) -> tuple[list[int], list[list[float]], list[float]]:
    """One annotation file: its objects' class columns and corners, and the image's width and height."""
    try:
        tree = ElementTree.parse(need(path, "an Annotations/{image_id}.xml for every train image"))
    except ElementTree.ParseError as exc:
        raise WsmlError(f"{path}: not valid XML ({exc})") from None
    size = tree.find("size")
    if size is None:
        raise WsmlError(f"{path}: no <size>; expected a VOC annotation file")
    columns, boxes = [], []
    for node in tree.iterfind("object"):
        name = (node.findtext("name") or "").strip()
        if name not in CLASSES:
            raise WsmlError(f"{path}: object '{name}' is not one of the 20 VOC classes")
        box = node.find("bndbox")
        if box is None:
            raise WsmlError(f"{path}: object '{name}' has no <bndbox>")
        x0, y0, x1, y1 = (_number(path, box, tag) for tag in CORNERS)
        if x1 < x0 - 1 or y1 < y0 - 1:
            raise WsmlError(f"{path}: object '{name}' has a <bndbox> whose max is below its min")
        columns.append(CLASSES.index(name))
        boxes.append([x0 - 1, y0 - 1, x1, y1])  # inclusive 1-based pixels -> edges from 0
    return columns, boxes, [_number(path, size, "width"), _number(path, size, "height")]


def read_boxes(root: Path, images: list[str]) -> Objects:
    """The objects of the official train images `images`, from Annotations/ (which must be there)."""
    folder = _base(root) / ANNOTATIONS
    if not folder.is_dir():
        raise WsmlError(
            f"{folder}: not found; the voc converter draws salient single positives from the object boxes in "
            "Annotations/*.xml (VOCtrainval_11-May-2012.tar has them), or use --observed single-positive"
        )
    rows, columns, boxes, sizes = [], [], [], []
    for row, image in enumerate(images):
        classes, corners, size = _image_objects(folder / f"{Path(image).stem}.xml")
        rows += [row] * len(classes)
        columns += classes
        boxes += corners
        sizes += [size] * len(classes)
    return Objects.from_boxes(np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64), boxes, sizes)
