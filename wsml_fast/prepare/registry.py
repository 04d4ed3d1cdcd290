"""Format name -> reader. Each reader turns one raw dataset layout into a `RawDataset`; the formats whose raw
files hold object boxes also have a box reader, for the salient single positives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare import coco, csv_table, cub, npy, nuswide, openimages, voc
from wsml_fast.prepare.salient import Objects
from wsml_fast.prepare.source import RawDataset

Reader = Callable[[Path, Path | None], RawDataset]
BoxReader = Callable[[Path, list[str]], Objects]  # (root, the official train rows) -> their objects

READERS: dict[str, Reader] = {
    "voc": voc.read,
    "coco": coco.read,
    "nuswide": nuswide.read,
    "cub": cub.read,
    "openimages": openimages.read,
    "npy": npy.read,
    "csv": csv_table.read,
}


def get_reader(name: str) -> Reader:
    """The reader registered as `name`, or an error listing the known formats."""
    try:
        return READERS[name.lower()]
    except KeyError:
        raise WsmlError(f"unknown dataset format '{name}'; known formats: {', '.join(READERS)}") from None


BOX_READERS: dict[str, BoxReader] = {"voc": voc.read_boxes, "coco": coco.read_boxes}


def get_box_reader(name: str, observed: str) -> BoxReader:
    """The box reader of format `name`, or the one line saying it has none (before anything is read)."""
    try:
        return BOX_READERS[name.lower()]
    except KeyError:
        raise WsmlError(
            f"--observed {observed}: the {name} converter has image-level labels only, no object boxes to draw "
            f"from; use it on {' or '.join(BOX_READERS)}, or use --observed single-positive"
        ) from None
