"""`prepare_dataset`: read a raw dataset, split it, simulate observed labels, check images, write files.

Everything format-specific lives in the readers; this module holds the steps all formats share, so the
split rule and the observation protocol are the same whichever dataset they are applied to. How the observed
labels were made (format, `--observed`, seed, protocol) is written beside them in prepare.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsml_fast.core.atomic import write_text
from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import SPLITS, outside_root, write_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.splits import split_train_valid
from wsml_fast.prepare.images import expose_images, missing_images
from wsml_fast.prepare.observe import ObservedSpec, check_protocol, parse_observed, simulate_observed
from wsml_fast.prepare.registry import get_box_reader, get_reader
from wsml_fast.prepare.salient import Objects, observe_salient
from wsml_fast.prepare.source import Labels, Part, RawDataset, positives_per_row, stack_rows, take_rows

SHOW_MISSING = 3
RECORD = "prepare.json"


@dataclass
class PrepareSummary:
    """Counts reported at the end of `wsml prepare`."""

    out: Path
    images: dict[str, int]  # rows per split
    classes: int
    mean_positives: float  # per image, from the truth when there is one, else from the given labels
    without_positives: int
    missing: int  # listed images not found (dropped when allowed)


@dataclass
class _Table:
    images: list[str]
    splits: np.ndarray
    observed: Labels
    truth: np.ndarray | None

    def take(self, index: np.ndarray) -> _Table:
        truth = None if self.truth is None else self.truth[index]
        return _Table([self.images[i] for i in index], self.splits[index], take_rows(self.observed, index), truth)


def _piece(split: str, part: Part, observed: Labels, index: np.ndarray | None = None) -> _Table:
    table = _Table(part.images, np.full(len(part.images), split, dtype=object), observed, part.truth)
    return table if index is None else table.take(index)


def _evaluation(part: Part) -> Labels:
    """Valid and test rows are scored against full truth, so they are observed in full when it exists."""
    return part.truth if part.truth is not None else part.observed


def _observe(
    train: Part,
    classes: list[str],
    spec: ObservedSpec,
    seed: int,
    protocol: str,
    read_boxes: Callable[[list[str]], Objects] | None,
) -> Labels:
    """The official train part's observed labels: the source's own, or drawn from its truth (and object boxes)."""
    if train.observed is not None:
        return train.observed
    if spec.salient is not None:
        objects = read_boxes(train.images)
        return observe_salient(train.truth, objects, spec.salient, seed, train.images, classes)
    return simulate_observed(train.truth, spec, seed, protocol)


def _assemble(
    source: RawDataset,
    spec: ObservedSpec,
    seed: int,
    protocol: str,
    read_boxes: Callable[[list[str]], Objects] | None,
) -> _Table:
    pieces = []
    train = source.parts.get("train")
    if train is not None:
        observed = _observe(train, source.classes, spec, seed, protocol, read_boxes)
        if "valid" in source.parts:
            pieces.append(_piece("train", train, observed))
        else:
            train_index, valid_index = split_train_valid(len(train.images), seed)
            pieces.append(_piece("train", train, observed, train_index))
            pieces.append(_piece("valid", train, _evaluation(train), valid_index))
    pieces += [_piece(s, source.parts[s], _evaluation(source.parts[s])) for s in ("valid", "test") if s in source.parts]
    truths = [p.truth for p in pieces]
    return _Table(
        [image for p in pieces for image in p.images],
        np.concatenate([p.splits for p in pieces]),
        stack_rows([p.observed for p in pieces]),
        None if any(t is None for t in truths) else np.concatenate(truths, axis=0),
    )


def _drop_missing(
    table: _Table, links: dict[str, Path], allow_missing: bool, log: Callable[[str], None]
) -> tuple[_Table, int]:
    """The table without rows whose image is absent (only if allowed), and how many were absent."""
    missing = missing_images(table.images, links)
    count = int(missing.sum())
    if not count:
        return table, 0
    names = ", ".join(table.images[i] for i in np.flatnonzero(missing)[:SHOW_MISSING])
    where = ", ".join(f"{k or 'images'} -> {v}" for k, v in links.items())
    message = f"{count} of {len(table.images)} listed images not found (first: {names}; looked in {where})"
    if not allow_missing:
        raise WsmlError(f"{message}; fix the image root or pass --allow-missing to drop them")
    log(f"{message}; dropped {count} images")
    return table.take(np.flatnonzero(~missing)), count


def _check_copy(images: list[str]) -> None:
    """Copies go to `out/images/PATH`: a path outside the image root would land outside `out/images`."""
    absolute, up = outside_root(images)
    if absolute or up:
        first = (absolute or up)[0]
        raise WsmlError(
            f"--copy: {len(absolute) + len(up)} image paths are absolute or leave the image root through '..' "
            f"(first: {first}); copies would land outside the output's images/ folder: make the paths relative "
            "to the image root, or link instead of copying"
        )


def _check_out(out: Path) -> None:
    """`out` can be made and written, and holds no earlier dataset: found before the raw labels are read."""
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise WsmlError(f"--out {out}: {existing} {what}; choose a folder you can write to")
    taken = [p.name for p in (out / "images", out / "observed.csv") if p.exists() or p.is_symlink()]
    if taken:
        raise WsmlError(f"{out}: already holds {' and '.join(taken)}; remove them or choose another output folder")


def _write(out: Path, table: _Table, classes: list[str], record: dict) -> None:
    """Sparse observed labels (OpenImages) go to the compact form, written from the store's entries."""
    compact = isinstance(table.observed, LabelStore)
    write_label_csv(out / "observed.csv", table.images, table.splits, classes, table.observed, compact=compact)
    if table.truth is not None:
        write_label_csv(out / "truth.csv", table.images, table.splits, classes, table.truth)
    write_text(out / RECORD, json.dumps(record, indent=1) + "\n")


def _summarize(out: Path, table: _Table, classes: list[str], missing: int) -> PrepareSummary:
    positives = positives_per_row(table.truth if table.truth is not None else table.observed)
    return PrepareSummary(
        out=out,
        images={s: int((table.splits == s).sum()) for s in SPLITS},
        classes=len(classes),
        mean_positives=float(positives.mean()) if len(positives) else 0.0,
        without_positives=int((positives == 0).sum()),
        missing=missing,
    )


def prepare_dataset(
    name: str,
    root: Path,
    out: Path,
    observed: str = "single-positive",
    seed: int = 1200,
    protocol: str = "wsml",
    allow_missing: bool = False,
    copy_images: bool = False,
    image_root: Path | None = None,
    log: Callable[[str], None] = print,
) -> PrepareSummary:
    """Convert the raw dataset at `root` (format `name`) into `out/` (images/, observed.csv, truth.csv, prepare.json).

    `image_root` is the folder the image paths are relative to: needed by `npy` and `csv` (default: next to
    their label files); for the public datasets it overrides the standard image folder of the raw layout.
    """
    reader = get_reader(name)
    spec = parse_observed(observed)
    check_protocol(protocol, spec)
    box_reader = None if spec.salient is None else get_box_reader(name, spec.text())
    out, root = Path(out), Path(root)
    _check_out(out)
    source = reader(root, None if image_root is None else Path(image_root))
    for note in source.notes:
        log(note)
    read_boxes = None if box_reader is None else lambda images: box_reader(root, images)
    table = _assemble(source, spec, seed, protocol, read_boxes)
    table, missing = _drop_missing(table, source.links, allow_missing, log)
    if copy_images:
        _check_copy(table.images)
    try:
        out.mkdir(parents=True, exist_ok=True)
        expose_images(out, source.links, table.images, copy_images)
        _write(
            out,
            table,
            source.classes,
            {"format": name.lower(), "observed": spec.text(), "seed": seed, "protocol": protocol},
        )
    except OSError as exc:  # a read-only file system where access() said yes, a full disk while copying
        raise WsmlError(f"--out {out}: cannot write there ({exc.strerror}); choose a folder you can write to") from None
    summary = _summarize(out, table, source.classes, missing)
    counts = ", ".join(f"{s} {n}" for s, n in summary.images.items())
    log(
        f"wrote {out}: {counts} images, {summary.classes} classes, "
        f"{summary.mean_positives:.2f} positives per image, {summary.without_positives} images without "
        f"positives, {summary.missing} missing images"
    )
    return summary
