"""Format name -> reader. Each reader turns one raw dataset layout into a `RawDataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wsml_fast.core.errors import WsmlError
from wsml_fast.prepare import coco, csv_table, cub, npy, nuswide, openimages, voc
from wsml_fast.prepare.source import RawDataset

Reader = Callable[[Path, Path | None], RawDataset]

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
