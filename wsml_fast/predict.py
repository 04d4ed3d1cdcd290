"""`wsml predict`: class probabilities for images or folders of images, from a run folder alone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsml_fast.data import ImageLabelDataset, make_loader
from wsml_fast.errors import WsmlError
from wsml_fast.inference import pick_device, predict_scores, resolve_precision
from wsml_fast.labelstore import LabelStore
from wsml_fast.runfolder import CONFIG, RUN_FILES, RunFolder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files named directly, plus every image under named folders (sorted, recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not inside:
                raise WsmlError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise WsmlError(f"{path}: no such file or folder")
    return found


def predict(run: RunFolder, paths: list[Path], batch_size: int = 64) -> pd.DataFrame:
    """A frame with `image` and one probability column per class."""
    info = run.model_info()
    images = collect_images(paths)
    classes = info.classes
    device = pick_device()
    dataset = ImageLabelDataset(
        Path("."),
        [str(p) for p in images],
        LabelStore.empty(len(images), len(classes)),
        info.img_size,
    )
    loader = make_loader(dataset, batch_size, False, 0, device)
    scores = predict_scores(run.load_model(device), loader, resolve_precision("auto", device), device)
    frame = pd.DataFrame(scores, columns=classes)
    frame.insert(0, "image", [str(p) for p in images])
    return frame


def check_output(out: Path, run: RunFolder) -> None:
    """Before any scoring: `--out` must be a file in an existing folder, and never one of a run's own files."""
    if out.is_dir():
        raise WsmlError(f"--out {out}: is a folder; name a CSV file (for example {out / 'preds.csv'})")
    if not out.parent.is_dir():
        raise WsmlError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
    if out.name in RUN_FILES and (out.parent / CONFIG).is_file():
        raise WsmlError(f"--out {out}: is a file of the run folder {out.parent}; write predictions elsewhere")
