"""PASCAL VOC 2012 classification labels.

Layout (ROOT may also be VOCdevkit or VOC2012 itself):
ROOT/VOCdevkit/VOC2012/ImageSets/Main/{class}_{train,val}.txt  lines `image_id label`, label 1, -1 or
0 (difficult; only 1 counts as positive), and ROOT/VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg.
Official train -> train/valid, official val -> test. Rows sorted by file name, as in the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare.source import Part, RawDataset
from wsml_fast.prepare.textfiles import find_base, first_duplicate, need, read_fields

CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()
LAYOUT = "ROOT/VOCdevkit/VOC2012/ImageSets/Main/{class}_{train,val}.txt and ROOT/VOCdevkit/VOC2012/JPEGImages/"
MAIN = "ImageSets/Main"


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
    base = find_base(root, ("VOCdevkit/VOC2012", "VOC2012", "."), MAIN, LAYOUT)
    main = base / MAIN
    parts = {split: _part(main, phase) for split, phase in (("train", "train"), ("test", "val"))}
    return RawDataset(list(CLASSES), {"": image_root or base / "JPEGImages"}, parts)
