"""NUS-WIDE with its 81 concepts.

Layout: ROOT/ImageList/{Train,Test}Imagelist.txt (Windows paths such as `actor\\0001_2124494179.jpg`),
ROOT/Groundtruth/TrainTestLabels/Labels_{concept}_{Train,Test}.txt (one 0/1 per line, in image-list
order), optional ROOT/Concepts81.txt (concept order; else the label file names sorted) and images in
ROOT/Flickr/{folder}/{file}.jpg. Official Train -> train/valid, Test -> test. Images without any
positive are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare.source import Part, RawDataset
from wsml_fast.prepare.textfiles import need, read_fields

LAYOUT = (
    "ROOT/ImageList/{Train,Test}Imagelist.txt, "
    "ROOT/Groundtruth/TrainTestLabels/Labels_{concept}_{Train,Test}.txt and images in ROOT/Flickr/"
)
LABELS = "Groundtruth/TrainTestLabels"


def _concepts(root: Path) -> list[str]:
    listed = root / "Concepts81.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    names = sorted(p.name[len("Labels_") : -len("_Train.txt")] for p in (root / LABELS).glob("Labels_*_Train.txt"))
    if not names:
        raise WsmlError(f"{root / LABELS}: no Labels_{{concept}}_Train.txt files; expected {LAYOUT}")
    return names


def _image_list(path: Path) -> list[str]:
    """Relative image paths with `/`, whatever prefix up to the Flickr folder the list carries."""
    lines = [line.strip().replace("\\", "/") for line in need(path, LAYOUT).read_text().splitlines()]
    return [line.rpartition("Flickr/")[2] for line in lines if line]


def _column(path: Path, n_images: int) -> np.ndarray:
    values = read_fields(need(path, LAYOUT), ("label",), integer=("label",))["label"]
    if len(values) != n_images:
        raise WsmlError(f"{path}: {len(values)} labels for {n_images} images in the image list; they must match")
    bad = np.flatnonzero(~values.isin((0, 1)).to_numpy())
    if bad.size:
        raise WsmlError(f"{path}: line {values.index[bad[0]]}: label {values.iloc[bad[0]]} is not 0 or 1")
    return values.to_numpy(dtype=np.float32)


def _part(root: Path, phase: str, concepts: list[str]) -> Part:
    images = _image_list(root / "ImageList" / f"{phase}Imagelist.txt")
    columns = [_column(root / LABELS / f"Labels_{c}_{phase}.txt", len(images)) for c in concepts]
    return Part(images, truth=np.stack(columns, axis=1))


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Parse the image lists and the per-concept label columns."""
    concepts = _concepts(root)
    parts = {split: _part(root, phase, concepts) for split, phase in (("train", "Train"), ("test", "Test"))}
    return RawDataset(concepts, {"": image_root or root / "Flickr"}, parts)
