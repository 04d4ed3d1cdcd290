"""`wsml complete` at OpenImages scale: the time and peak memory of completing the train split of scale.py's
synthetic sets (9,600 classes, images linked to ten MNIST digits) with a tiny model.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/complete_scale.py              # 100,000 and 1,700,000 rows
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/complete_scale.py --rows 20000 --folder /tmp/wsml-complete --keep
    PYTHONPATH=. python benchmarks/complete_scale.py --smoke

The labels are scale.py's (about 7.5 observed entries a row, Zipf-like class frequencies, 80/10/10 splits, a link
per image to one of ten digits: image i shows digit i mod 10) except on the valid rows, where random labels would
give a model nothing to reach a precision on: the entries observed there keep their places, but for the `--adding`
most frequent classes their value follows the image's digit (the k-th of those classes is positive on digit k mod
10), and for every other class they are negative. The model is timm's test_efficientnet at 16 px (a random body)
whose linear head is solved, by least squares on the ten digits' features, to score those classes high on their
digit and everything else low. `--target-precision 0.9` then fits a threshold for each of the `--adding` classes
(valid precision 1), names the others (no valid positive) and adds about `--adding` / 10 positives to each train
image: the additions are made to order; what is measured is the cost of scoring every image of the split and
keeping what it adds at this size.

Each `wsml complete` (the real command, image check and valid scoring included) and each `load_table` beside it
runs in a fresh child process: wall time and peak resident memory (VmHWM, reset after the imports), as in scale.py.
Beside them, the extra memory per image: dense float32 scores of the split would take 4 x 9,600 = 38,400 bytes an
image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from scale import CLASSES, make_dataset, measure, reset_peak, source_pngs, status_mb
from smoke import parse_args, scratch

import wsml_fast
from wsml_fast.data.labelstore import LabelStore

SIZES = (100_000, 1_700_000)
ADDING = 20  # classes whose valid labels follow a digit, and which the model scores high on it
DIGITS = 10
BACKBONE, IMG_SIZE, BS = "test_efficientnet", 16, 128  # scoring batches of 2 x BS
HIGH, LOW = 4.0, -4.0  # the head's logits on and off a class's digit
TARGET = 0.9


def digit_labels(adding: int, homes: dict[int, int]):
    """A `relabel` for scale.make_dataset: valid entries follow the digits for the `adding` most frequent classes
    (noted in `homes`: class -> digit), negative elsewhere."""

    def relabel(store: LabelStore, splits: np.ndarray) -> LabelStore:
        rows, cols = store.rows_and_cols()
        frequent = np.argsort(-np.bincount(cols, minlength=store.n_classes), kind="stable")[:adding]
        home = np.full(store.n_classes, -1)
        home[frequent] = np.arange(adding) % DIGITS
        homes.update(zip(frequent.tolist(), home[frequent].tolist(), strict=True))
        valid = splits[rows] == "valid"
        values = store.values.copy()
        values[valid] = home[cols[valid]] == rows[valid] % DIGITS
        return LabelStore(store.n_rows, store.n_classes, store.keys, values, store.fill)

    return relabel


def write_model(folder: Path, homes: dict[int, int]) -> Path:
    """model.pth of test_efficientnet whose head gives class c the logit HIGH on digit homes[c], LOW elsewhere."""
    import torch

    from wsml_fast.data.loaders import ImageLabelDataset
    from wsml_fast.model.modelfile import ModelFile, ModelSpec

    classes = (folder / "classes.txt").read_text().splitlines()
    torch.manual_seed(0)
    spec = ModelSpec(BACKBONE, tuple(classes), IMG_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model = spec.build().eval()
    digits = source_pngs(folder / "sources")  # the files the links point to, digit 0 to 9
    images = ImageLabelDataset(Path("/"), [str(p) for p in digits], LabelStore.empty(DIGITS, 0), IMG_SIZE)
    with torch.no_grad():
        features = model.features(torch.stack([images[d][0] for d in range(DIGITS)])).double()
    logits = np.full((DIGITS, len(classes)), LOW) - 0.1 * np.arange(DIGITS)[:, None]  # distinct scores per digit
    for c, digit in homes.items():
        logits[digit, c] = HIGH
    weight = torch.linalg.pinv(features) @ torch.from_numpy(logits)  # features @ weight = logits
    state = model.state_dict() | {"head.weight": weight.T.float().contiguous(), "head.bias": torch.zeros(len(classes))}
    model.load_state_dict(state)
    with torch.no_grad():
        error = (model(torch.stack([images[d][0] for d in range(DIGITS)])).double() - torch.from_numpy(logits)).abs()
    if error.max() > 0.5:
        raise RuntimeError(f"the solved head misses its logits by up to {error.max():.2f}")
    path = folder / "model.pth"
    ModelFile.unfitted(spec, state, {"config": {"data": str(folder), "bs": BS}}).save(path)
    return path


def _child(model: Path, out: Path) -> None:
    """Run `wsml complete` and print its figures as JSON after its own output (this is the child process): its time
    and peak, and both as they stood when the scoring was done and the writing began."""
    import wsml_fast.inference.complete as completing
    from wsml_fast.cli import main

    figures: dict[str, float | str] = {}
    write = completing.write_completed

    def noted_write(*args, **kwargs) -> None:
        figures.update(scored_s=time.perf_counter() - started, scored_peak_mb=status_mb("VmHWM"))
        write(*args, **kwargs)

    completing.write_completed = noted_write
    reset_peak()
    started, code = time.perf_counter(), 0
    try:
        main(["complete", str(model), "--target-precision", str(TARGET), "--out", str(out)])
    except SystemExit as exit:
        code = exit.code
    figures |= {"seconds": time.perf_counter() - started, "peak_mb": status_mb("VmHWM")}
    print(json.dumps(figures | ({"failed": f"exit {code}"} if code else {})))


def measure_complete(model: Path, out: Path) -> tuple[dict, list[str]]:
    """The figures of one `wsml complete` in a fresh process, and the lines it printed."""
    package_root = str(Path(wsml_fast.__file__).resolve().parent.parent)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(model), str(out)], env=env, capture_output=True, text=True
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}, []
    return json.loads(lines[-1]), lines[:-1]


def run_size(folder: Path, rows: int, args: argparse.Namespace) -> dict[str, float]:
    """Make (or reuse) the dataset and model of `rows` rows, then load its labels and complete it, each in a
    fresh process; returns the peaks (MB) of both."""
    if not (args.reuse and (folder / "model.pth").is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        homes: dict[int, int] = {}
        made = make_dataset(folder, rows, args.classes, relabel=digit_labels(args.adding, homes))
        write_model(folder, homes)
        print(
            f"{rows:,} rows x {args.classes:,} classes: {made['entries']:,} entries | made: labels "
            f"{made['labels_s']:.1f} s, observed.csv {made['csv_s']:.1f} s, image links {made['links_s']:.1f} s",
            flush=True,
        )
    splits = pd.read_csv(folder / "observed.csv", usecols=["split"]).split.value_counts()
    loaded = measure("load_table", folder)
    if "failed" in loaded:
        print(f"  load_table failed ({loaded['failed']})")
        return {}
    print(f"  load_table      {loaded['seconds']:7.1f} s | peak RSS {loaded['peak_mb']:6.0f} MB", flush=True)
    out = folder / "completed"
    shutil.rmtree(out, ignore_errors=True)
    figures, lines = measure_complete(folder / "model.pth", out)
    if "failed" in figures:
        print(f"  wsml complete failed ({figures['failed']})", *lines, sep="\n    ")
        return {}
    train, valid = int(splits.get("train", 0)), int(splits.get("valid", 0))
    print(
        f"  wsml complete   {figures['seconds']:7.1f} s | peak RSS {figures['peak_mb']:6.0f} MB "
        f"(+{figures['peak_mb'] - loaded['peak_mb']:.0f} MB over load_table's) | {train:,} train and {valid:,} valid "
        f"images scored: {(train + valid) / figures['seconds']:,.0f} images/s overall",
        f"up to the writing {figures['scored_s']:7.1f} s | peak RSS {figures['scored_peak_mb']:6.0f} MB "
        f"(+{figures['scored_peak_mb'] - loaded['peak_mb']:.0f} MB over load_table's)",
        *lines,
        sep="\n    ",
        flush=True,
    )
    sizes = {name: (out / name).stat().st_size / 2**20 for name in ("observed.csv", "added.csv")}
    print(f"    {out}: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sizes.items()))
    return {
        "load_table": loaded["peak_mb"],
        "wsml complete up to the writing": figures["scored_peak_mb"],
        "wsml complete": figures["peak_mb"],
    }


def slopes(peaks: dict[int, dict[str, float]], classes: int) -> None:
    """The peaks' growth per image from the smallest size to the largest, beside dense scores'."""
    measured = sorted(rows for rows, figures in peaks.items() if figures)
    if len(measured) < 2:
        return
    low, high = measured[0], measured[-1]
    grown = ", ".join(
        f"{what} +{(peaks[high][what] - peaks[low][what]) * 2**20 / (high - low):,.0f} bytes" for what in peaks[low]
    )
    print(
        f"peak RSS per image from {low:,} to {high:,} rows: {grown} (dense float32 scores of {classes:,} classes: "
        f"{4 * classes:,} bytes)"
    )


@contextmanager
def datasets_folder(args: argparse.Namespace) -> Iterator[Path]:
    """Where the datasets go: a scratch folder for the smoke, `--folder`, or a temporary folder (removed at the
    end unless `--keep`)."""
    if args.smoke:
        with scratch("wsml-complete-scale-") as folder:
            yield folder
        return
    base = args.folder or Path(tempfile.mkdtemp(prefix="wsml-complete-scale-"))
    try:
        yield base
    finally:
        if args.folder is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--adding", type=int, default=ADDING, help="classes the model is made to add")
    parser.add_argument("--folder", type=Path, help="where the datasets go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the datasets (FOLDER/rows-N) after measuring")
    parser.add_argument("--reuse", action="store_true", help="measure datasets (and models) already in --folder")
    args = parse_args(parser, rows=[300], classes=40, adding=4)
    print(f"wsml_fast from {Path(wsml_fast.__file__).parent}; {BACKBONE} at {IMG_SIZE} px, batches of {2 * BS}")
    with datasets_folder(args) as base:
        print(f"datasets in {base}")
        peaks = {}
        for rows in args.rows:
            folder = base / f"rows-{rows}"
            try:
                peaks[rows] = run_size(folder, rows, args)
            finally:
                if not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)
        slopes(peaks, args.classes)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
