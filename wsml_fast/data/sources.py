"""Where the data of a run comes from: `--data DIR`, `--csv FILE --images ROOT` or `--dataset NAME`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wsml_fast.core.errors import WsmlError

DOWNLOADS = {  # where the raw benchmark data comes from, for the "not prepared yet" message
    "voc": "PASCAL VOC 2012 trainval tar (VOCtrainval_11-May-2012.tar) from the PASCAL VOC site",
    "coco": "COCO 2014 train/val images and annotations_trainval2014.zip from cocodataset.org",
    "nuswide": "NUS-WIDE images, Groundtruth and ImageList from the NUS-WIDE page of NUS LMS",
    "cub": "CUB_200_2011.tgz from the Caltech-UCSD Birds-200-2011 page",
    "openimages": "the human-verified image-level labels and class descriptions of Open Images",
}
OBSERVED = "observed.csv"
TRUTH = "truth.csv"


def data_home() -> Path:
    """`$WSML_HOME/data`, by default `~/.cache/wsml/data`: where prepared datasets live."""
    return Path(os.environ.get("WSML_HOME", "~/.cache/wsml")).expanduser() / "data"


@dataclass(frozen=True)
class DatasetFiles:
    """Where a prepared dataset's files are: the observed-label CSV, the image root and, if any, the full truth
    (what training, `eval` and `tune` read; `prepare.source.RawDataset` is a raw download being prepared)."""

    name: str
    observed_csv: Path
    images_root: Path
    truth_csv: Path | None


def from_folder(folder: Path, name: str | None = None) -> DatasetFiles:
    """A dataset folder: `images/`, `observed.csv` and optionally `truth.csv`."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WsmlError(f"--data {folder}: folder not found")
    observed = folder / OBSERVED
    if not observed.is_file():
        raise WsmlError(f"{observed}: file not found (a dataset folder holds images/, observed.csv, truth.csv)")
    images = folder / "images"
    if not images.is_dir():
        raise WsmlError(f"{images}: folder not found (a dataset folder holds images/, observed.csv, truth.csv)")
    truth = folder / TRUTH
    return DatasetFiles(name or folder.name, observed, images, truth if truth.is_file() else None)


def from_csv(csv: Path, images: Path | None) -> DatasetFiles:
    """A label CSV anywhere, with its image root; a `truth.csv` beside the CSV is used if present."""
    csv = Path(csv).expanduser()
    if images is None:
        raise WsmlError("--csv needs --images ROOT (the folder the CSV's image paths are relative to)")
    images = Path(images).expanduser()
    if not csv.is_file():
        raise WsmlError(f"--csv {csv}: file not found")
    if not images.is_dir():
        raise WsmlError(f"--images {images}: folder not found")
    truth = csv.with_name(TRUTH)
    return DatasetFiles(csv.stem, csv, images, truth if truth.is_file() and truth != csv else None)


def from_dataset(name: str, say: Callable[[str], None]) -> DatasetFiles:
    """A prepared dataset under the data home; the demo dataset is made on first use (and `say` says so)."""
    folder = data_home() / name
    if name == "demo" and not (folder / OBSERVED).is_file():
        from wsml_fast.data.demo import SPLIT_IMAGES, make_demo_dataset

        say(f"demo: making {sum(SPLIT_IMAGES.values())} images from MNIST digits into {folder} (once)")
        make_demo_dataset(folder)
    if not folder.is_dir():
        where = f" (raw data: {DOWNLOADS[name]})" if name in DOWNLOADS else ""
        raise WsmlError(
            f"--dataset {name}: not prepared under {data_home()}; run `wsml prepare {name} --root RAW_DIR` "
            f"first{where}, or pass --data DIR"
        )
    return from_folder(folder, name)


def resolve_source(
    dataset: str | None,
    data: str | None,
    csv: str | None,
    images: str | None,
    say: Callable[[str], None] | None = None,
) -> DatasetFiles:
    """Exactly one of the three ways to name data; the demo dataset when none is given. `say` (by default a
    console `Reporter`) tells of the demo dataset being made."""
    given = [opt for opt, value in (("--dataset", dataset), ("--data", data), ("--csv", csv)) if value]
    if len(given) > 1:
        raise WsmlError(f"{' and '.join(given)} name two data sources; give only one")
    if images and not csv:
        raise WsmlError("--images goes with --csv FILE (with --data DIR the images are in DIR/images)")
    if data:
        return from_folder(Path(data))
    if csv:
        return from_csv(Path(csv), Path(images) if images else None)
    if say is None:
        from wsml_fast.core.report import Reporter

        say = Reporter()
    return from_dataset(dataset or "demo", say)
