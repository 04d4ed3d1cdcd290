"""Check that listed images exist and expose them under `out/images` without copying by default.

Existence is checked with one directory listing per folder rather than one stat per image, which keeps
datasets with hundreds of thousands of images fast on network file systems.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def raw_path(links: dict[str, Path], relative: str) -> Path | None:
    """Where a path relative to `out/images` lies in the raw dataset (None if no link covers it)."""
    if "" in links:
        return links[""] / relative
    head, _, rest = relative.partition("/")
    return links[head] / rest if head in links else None


def _listing(folder: Path | None) -> set[str]:
    try:
        return set(os.listdir(folder)) if folder is not None else set()
    except (FileNotFoundError, NotADirectoryError):
        return set()


def missing_images(images: Sequence[str], links: dict[str, Path]) -> np.ndarray:
    """Boolean mask of the images that are not found where `links` says they lie."""
    parts = pd.Series(list(images), dtype=object).str.rpartition("/")
    missing = np.zeros(len(images), dtype=bool)
    for folder, index in parts.groupby(0).indices.items():
        listing = _listing(raw_path(links, folder) if folder else raw_path(links, "."))
        missing[index] = ~parts[2].iloc[index].isin(listing).to_numpy()
    return missing


def expose_images(out: Path, links: dict[str, Path], images: Sequence[str], copy: bool) -> None:
    """Make `out/images` a symlink (or a folder of symlinks) to the raw folders, or copy the listed files."""
    target = out / "images"
    if copy:
        for relative in images:
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(raw_path(links, relative), destination)
        return
    if "" in links:
        target.symlink_to(links[""].resolve(), target_is_directory=True)
        return
    target.mkdir()
    for name, folder in links.items():
        (target / name).symlink_to(folder.resolve(), target_is_directory=True)
