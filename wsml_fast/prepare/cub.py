"""CUB-200-2011 with its 312 binary bird attributes as labels.

Layout: CUB_200_2011/{images.txt, train_test_split.txt, attributes/image_attribute_labels.txt, images/}
found as ROOT/CUB_200_2011/CUB_200_2011/, ROOT/CUB_200_2011/ or ROOT itself; `attributes.txt` either
inside that folder or in its parent (the official archive puts it there). Label lines are
`image_id attribute_id is_present certainty_id time`; extra fields are ignored and so is certainty.
Official train (is_train 1) -> train/valid, the rest -> test; rows in images.txt order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare.source import Part, RawDataset
from wsml_fast.prepare.textfiles import find_base, first_duplicate, need, read_fields

LAYOUT = (
    "ROOT/CUB_200_2011/{images.txt, train_test_split.txt, attributes/image_attribute_labels.txt, images/} "
    "and attributes.txt in that folder or its parent"
)


def _attributes_file(base: Path) -> Path:
    for candidate in (
        base / "attributes.txt",
        base.parent / "attributes.txt",
        base / "attributes" / "attributes.txt",
    ):
        if candidate.is_file():
            return candidate
    return need(base / "attributes.txt", LAYOUT)


def _flag(path: Path, frame, column: str) -> None:
    bad = np.flatnonzero(~frame[column].isin((0, 1)).to_numpy())
    if bad.size:
        raise WsmlError(f"{path}: line {frame.index[bad[0]]}: {column} is {frame[column].iloc[bad[0]]}, not 0 or 1")


def _lookup(path: Path, frame, column: str, ids: np.ndarray, what: str) -> np.ndarray:
    """Positions of `frame[column]` values in `ids`, failing on the first id that is not there."""
    order = np.argsort(ids)
    found = np.searchsorted(ids, frame[column].to_numpy(), sorter=order)
    found = order[np.minimum(found, len(ids) - 1)]
    bad = np.flatnonzero(ids[found] != frame[column].to_numpy())
    if bad.size:
        raise WsmlError(f"{path}: line {frame.index[bad[0]]}: {column} {frame[column].iloc[bad[0]]} is not in {what}")
    return found


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Parse image list, split and attribute labels into one 0/1 matrix per official split."""
    base = find_base(root, ("CUB_200_2011/CUB_200_2011", "CUB_200_2011", "."), "images.txt", LAYOUT)
    images = read_fields(base / "images.txt", ("image_id", "path"), integer=("image_id",))
    first_duplicate(base / "images.txt", images["image_id"], "image id")
    split_path = need(base / "train_test_split.txt", LAYOUT)
    split = read_fields(split_path, ("image_id", "is_train"), integer=("image_id", "is_train"))
    _flag(split_path, split, "is_train")
    attributes_path = _attributes_file(base)
    attributes = read_fields(attributes_path, ("attribute_id", "name"), integer=("attribute_id",))
    first_duplicate(attributes_path, attributes["attribute_id"], "attribute id")
    labels_path = need(base / "attributes" / "image_attribute_labels.txt", LAYOUT)
    labels = read_fields(
        labels_path,
        ("image_id", "attribute_id", "is_present"),
        integer=("image_id", "attribute_id", "is_present"),
    )
    _flag(labels_path, labels, "is_present")

    image_ids = images["image_id"].to_numpy()
    truth = np.zeros((len(images), len(attributes)), dtype=np.float32)
    rows = _lookup(labels_path, labels, "image_id", image_ids, "images.txt")
    cols = _lookup(labels_path, labels, "attribute_id", attributes["attribute_id"].to_numpy(), "attributes.txt")
    truth[rows, cols] = labels["is_present"].to_numpy(dtype=np.float32)
    listed = _lookup(split_path, split, "image_id", image_ids, "images.txt")
    unlisted = np.setdiff1d(np.arange(len(images)), listed)
    if unlisted.size:
        raise WsmlError(
            f"{split_path}: image id {image_ids[unlisted[0]]} of images.txt has no line; every image needs one"
        )
    is_train = np.zeros(len(images), dtype=bool)
    is_train[listed] = split["is_train"].to_numpy() == 1
    paths = images["path"].tolist()
    parts = {
        name: Part([paths[i] for i in np.flatnonzero(mask)], truth=truth[mask])
        for name, mask in (("train", is_train), ("test", ~is_train))
    }
    return RawDataset(attributes["name"].tolist(), {"": image_root or base / "images"}, parts)
