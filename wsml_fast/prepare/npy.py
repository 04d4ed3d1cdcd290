"""The single-positive reference code's preprocessed arrays, for any of its datasets.

Layout: ROOT/formatted_{train,val}_{images,labels}.npy and, optionally,
ROOT/formatted_{train,val}_labels_obs.npy (or formatted_{train,val}_uniform_labels_obs.npy; -1 negative,
0 unobserved, 1 positive), ROOT/classes.txt (one name per line; else classes are named class_0, ...).
Image paths in the arrays are relative to the image root, which defaults to ROOT; the reference's roots
are VOCdevkit/VOC2012/JPEGImages (pascal), the COCO folder holding train2014/ and val2014/ (coco),
Flickr/ (nuswide) and CUB_200_2011/CUB_200_2011/images (cub).
formatted_train -> train/valid; formatted_val -> test. Given observed labels are used for the train rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import UNOBSERVED, read_classes_file
from wsml_fast.prepare.source import Part, RawDataset

LAYOUT = "ROOT/formatted_{train,val}_{images,labels}.npy (optional formatted_{train,val}_labels_obs.npy)"


def _load(path: Path, allowed: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise WsmlError(f"{path}: not found; expected {LAYOUT}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise WsmlError(f"{path}: not a plain numpy array file ({exc})") from None
    if allowed and not np.isin(array, allowed).all():
        raise WsmlError(f"{path}: values must be {' or '.join(map(str, allowed))}")
    return array


def _observed(root: Path, phase: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """Reference observed labels (-1/0/1) turned into wsml's (0/-1/1), if a file is present."""
    for name in (f"formatted_{phase}_labels_obs.npy", f"formatted_{phase}_uniform_labels_obs.npy"):
        path = root / name
        if path.is_file():
            given = _load(path, (-1, 0, 1))
            if given.shape != shape:
                raise WsmlError(f"{path}: shape {given.shape} differs from the labels' {shape}")
            observed = np.full(shape, UNOBSERVED, dtype=np.float32)
            observed[given == 1] = 1.0
            observed[given == -1] = 0.0
            return observed
    return None


def _part(root: Path, phase: str) -> Part:
    images = _load(root / f"formatted_{phase}_images.npy", ())
    truth = _load(root / f"formatted_{phase}_labels.npy", (0, 1)).astype(np.float32)
    if truth.ndim != 2 or images.ndim != 1 or len(images) != len(truth):
        raise WsmlError(
            f"{root}: formatted_{phase}_images.npy has shape {images.shape} and formatted_{phase}_labels.npy "
            f"{truth.shape}; expected (N,) and (N, classes)"
        )
    observed = _observed(root, phase, truth.shape) if phase == "train" else None
    return Part([str(i) for i in images], truth=truth, observed=observed)


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Load both phases; the class count must agree between them."""
    parts = {split: _part(root, phase) for split, phase in (("train", "train"), ("test", "val"))}
    n_classes = parts["train"].truth.shape[1]
    if parts["test"].truth.shape[1] != n_classes:
        raise WsmlError(f"{root}: formatted_train and formatted_val labels have different class counts")
    names = root / "classes.txt"
    classes = read_classes_file(names) if names.is_file() else [f"class_{i}" for i in range(n_classes)]
    if len(classes) != n_classes:
        raise WsmlError(f"{names}: {len(classes)} names for {n_classes} label columns")
    notes = [f"{root}: no classes.txt, classes named class_0..class_{n_classes - 1}"] if not names.is_file() else []
    if parts["train"].observed is not None:
        notes.append(f"{root}: using the given formatted_train observed labels (the observed option is not used)")
    return RawDataset(classes, {"": image_root or root}, parts, notes)
