"""Every registered scheme on the demo dataset with the same settings and several seeds, as a Markdown table.

    python benchmarks/schemes.py [--mode linear] [--epochs 8] [--seeds 0 1 2] [--runs an llr llr+boost-lu=5 ...]
                                 [--out benchmarks/schemes.md] [--docs NAME]

A run is a registered scheme, optionally with `+option=value` settings (`llr+boost-lu=5`); by default every
scheme of the registry, and `llr` with the BoostLU head. `--docs NAME` also writes the table into docs/benchmarks.md
between the markers `<!-- schemes:NAME -->` and `<!-- /schemes:NAME -->`.

Columns: test mAP (mean and spread over seeds), the large-loss schemes' `ll_fn_precision` (share of the
selected entries that really are positives) and `train_recovery_map` (mAP on the training images against
their full truth), both at the best epoch. Afterwards it prints the step-time ratio of `llct` to `an`: median
training-step times in one Learner on the same images whose batches alternate between `an` and `llct` (the
real large-loss training loss, selecting from epoch 2 on).

`--smoke`: an, llct, llr with BoostLU, llr with --ema, and iu (refused) with timm's test_efficientnet at 32 px,
2 epochs, one seed, without the recipe's average of the weights unless a run asks for one, on a demo dataset of a
few dozen images, all in a temporary folder (the table goes there). The step timing trains without the average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args, scratch, tiny_demo

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import launched, process_switches
from wsml_fast.data.labels import write_label_csv
from wsml_fast.data.sources import DatasetFiles, resolve_source
from wsml_fast.data.table import load_table
from wsml_fast.learning.contract import WsmlCallback
from wsml_fast.schemes import SCHEMES
from wsml_fast.schemes.large_loss.training import LargeLossCallback, LargeLossTrainingLoss
from wsml_fast.training.config import TrainConfig, resolve
from wsml_fast.training.learner import build_learner
from wsml_fast.training.recipes import find_recipe
from wsml_fast.training.run import train
from wsml_fast.training.runfolder import METRICS, RESULTS, RunFolder
from wsml_fast.training.setup import set_up

DEFAULT_RUNS = [*SCHEMES, "llr+boost-lu=5"]
SMOKE_RUNS = ["an", "llct", "llr+boost-lu=5", "llr+ema=0.9", "iu"]  # iu is refused: the demo has no observed negatives
DOCS_PAGE = Path(__file__).parents[1] / "docs" / "benchmarks.md"


def parse_run(run: str) -> tuple[str, dict]:
    """`llr+boost-lu=5+mix=logicmix` -> ("llr", {"boost_lu": 5, "mix": "logicmix"}): numbers as numbers."""
    scheme, *settings = run.split("+")
    options = {}
    for setting in settings:
        key, value = setting.split("=")
        options[key.replace("-", "_")] = _number_or_text(value)
    return scheme, options


def _number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def demo_config(args: argparse.Namespace, scheme: str, data: dict | None = None, **options) -> TrainConfig:
    """The demo recipe's configuration of `scheme` with `options` on top, on the demo dataset unless `data` names
    other data (`wsml train`'s options); under `--smoke`, a tiny model on the smoke's tiny demo (`args.data`)."""
    recipe, name = find_recipe(None, "demo", scheme)
    data = data or ({"dataset": "demo"} if args.data is None else {"data": str(args.data)})
    # the smoke's 2 epochs would keep the recipe's average of epoch 1 for every scheme alike: none unless asked
    tiny = {"pretrained": False, "img_size": TINY_IMG_SIZE, "bs": 8, "ema": 0} if args.smoke else {}
    return resolve(recipe, name, {**data, **tiny, "scheme": scheme, "backbone": args.backbone, **options})


def source_of(config: TrainConfig) -> DatasetFiles:
    return resolve_source(config.dataset, config.data, config.csv, config.images)


def run_scheme(run: str, seed: int, args: argparse.Namespace, out_root: Path) -> dict:
    scheme, extra = parse_run(run)
    options = {"seed": seed, "mode": args.mode, "epochs": args.epochs, "lr": args.lr, **extra}
    if args.img_size is not None:
        options["img_size"] = args.img_size
    config = demo_config(args, scheme, **options, out=str(out_root / f"{run}-{seed}"))
    run = train(config, source_of(config))
    results = json.loads(run.file(RESULTS).read_text())
    metrics = pd.read_csv(run.file(METRICS)).set_index("epoch")
    best = metrics.loc[results["best_epoch"]]
    return {
        "test_map": results["test_map"],
        "ll_fn_precision": best.get("ll_fn_precision"),
        "train_recovery_map": best.get("train_recovery_map"),
        "seconds": results["train_seconds"],
        "weights": results.get("weights", "raw"),
    }


def table(rows: dict[str, list[dict]]) -> str:
    def spread(values: list[float]) -> str:
        values = [v for v in values if v == v]  # drop NaN
        if not values:
            return "-"
        return (
            f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"
            if len(values) > 1
            else f"{values[0]:.2f}"
        )

    lines = [
        "| scheme | test mAP | ll_fn_precision | train recovery mAP | seconds per run | averaged weights kept |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scheme, runs in rows.items():
        precision = [r["ll_fn_precision"] for r in runs if r["ll_fn_precision"] is not None]
        name = scheme.replace("+", " --").replace("=", " ")
        lines.append(
            f"| `{name}` | {spread([r['test_map'] for r in runs])} | "
            f"{spread([100 * p for p in precision]) if precision else '-'} | "
            f"{spread([r['train_recovery_map'] for r in runs])} | {statistics.mean(r['seconds'] for r in runs):.0f} | "
            f"{sum(r['weights'] == 'ema' for r in runs)} of {len(runs)} |"
        )
    return "\n".join(lines)


class AlternateWithAn(WsmlCallback):
    """LL-Ct on odd training batches, plain AN on even ones: the large-loss training loss selects nothing at
    epoch 1, so even batches tell it epoch 1 and odd ones the run's epoch; the two interleave batch by batch and
    drifts of the machine's speed hit both alike."""

    order = LargeLossCallback.order + 1  # after the large-loss state set the loss's epoch for the epoch

    def __init__(self, loss: LargeLossTrainingLoss) -> None:
        self.loss = loss

    def before_batch(self) -> None:
        if self.training:
            self.loss.epoch = self.run_state.epoch if self.iter % 2 else 1


class BatchTimer(Callback):
    """Seconds of each training batch (forward, loss and selection, backward, step) from epoch 2 on (the
    selection is active), filed under the scheme the batch ran."""

    order = 100  # after every other callback's before_batch

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {"an": [], "llct": []}

    def before_batch(self) -> None:
        self.start = time.perf_counter()

    def after_batch(self) -> None:
        if self.training and self.epoch >= 1:
            if self.dls.device.type == "cuda":
                torch.cuda.synchronize()
            self.times["llct" if self.iter % 2 else "an"].append(time.perf_counter() - self.start)


def timing_learner(args: argparse.Namespace, folder: Path) -> tuple[Learner, float]:
    """wsml's Learner of an `llct` run (end to end, fp32, Delta as in the demo recipe) on the first 16 batches
    of the demo's training images (and one batch of its valid images), and the recipe's learning rate. The
    images are listed in a label CSV of their own in `folder`, which the run reads as `--csv` / `--images`."""
    demo = demo_config(args, "llct")
    source = source_of(demo)
    table = load_table(source)
    rows = np.concatenate([table.rows("train")[: 16 * demo.bs], table.rows("valid")[: demo.bs]])
    csv = folder / "observed.csv"
    write_label_csv(csv, [table.images[i] for i in rows], table.splits[rows], table.classes, table.observed.take(rows))
    data = {"csv": str(csv), "images": str(source.images_root)}
    settings = {"mode": "end-to-end", "precision": "fp32", "workers": 0, "ema": 0}  # the steps compared, no average
    config = demo_config(args, "llct", data, **settings, out=str(folder / "run"))
    learn, _ = build_learner(set_up(config, source_of(config), RunFolder.check_new(Path(config.out), writes=True)))
    return learn, config.lr


def step_time_ratio(args: argparse.Namespace, folder: Path) -> tuple[float, float, int]:
    """Median seconds of an end-to-end training step under `an` and under `llct` (the real training loss), on the
    same demo images, the two alternating batch by batch in one Learner."""
    learn, lr = timing_learner(args, folder)
    large_loss = next(cb for cb in learn.cbs if isinstance(cb, LargeLossCallback))
    timer = BatchTimer()
    learn.add_cbs([AlternateWithAn(large_loss.loss), timer])
    learn.fit(args.timing_repeats, lr)
    an, llct = timer.times["an"], timer.times["llct"]
    return statistics.median(an), statistics.median(llct), min(len(an), len(llct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="linear", choices=("linear", "end-to-end", "linear-init"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--lr", type=float, default=None, help="default: the demo recipe's")
    parser.add_argument("--img-size", type=int, default=None, help="default: the demo recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="schemes, with +option=value settings")
    parser.add_argument(
        "--timing-repeats",
        type=int,
        default=12,
        help="epochs of alternating an/llct batches for the step ratio; 0 skips",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/schemes.md"))
    parser.add_argument("--docs", help="also write the table into docs/benchmarks.md between the markers of this name")
    smoke = {"epochs": 2, "backbone": TINY_BACKBONE, "seeds": [0], "runs": SMOKE_RUNS, "timing_repeats": 2}
    args = parse_args(parser, **smoke, out=None)
    if args.smoke and args.docs:
        raise SystemExit("--smoke writes nothing into the repository: drop --docs")
    command = "python benchmarks/schemes.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items()
        if k not in ("out", "docs") and v is not None and v is not False
    )
    if args.smoke:
        with scratch("wsml-schemes-") as tmp:
            args.data, args.out = tiny_demo(tmp), args.out or tmp / "schemes.md"
            run_all(args, command, tmp)
    else:
        args.data = None
        run_all(args, command, Path(tempfile.mkdtemp(prefix="wsml-schemes-")))


def run_all(args: argparse.Namespace, command: str, tmp: Path) -> None:
    """Every run of `args.runs` with every seed, the report after each, then the step-time ratio."""
    rows: dict[str, list[dict]] = {}
    refused: dict[str, str] = {}
    for run in args.runs:
        try:
            rows[run] = [run_scheme(run, seed, args, tmp) for seed in args.seeds]
        except WsmlError as exc:  # e.g. iu without observed negatives: a row that says why
            refused[run] = str(exc)
        report = write_report(args, command, rows, refused)  # after every scheme: a long run keeps what it did
    print(report)
    if args.timing_repeats:
        an, llct, batches = step_time_ratio(args, tmp / "step-timing")
        ratio = (
            f"training step (end-to-end, epochs 2+, median of {batches} batches each): "
            f"an {1000 * an:.1f} ms, llct {1000 * llct:.1f} ms, ratio llct/an {llct / an:.3f}"
        )
        args.out.write_text(f"{report}\n{ratio}\n")
        print(ratio)


def write_report(args: argparse.Namespace, command: str, rows: dict[str, list[dict]], refused: dict[str, str]) -> str:
    """The table so far into `--out` (and the docs page with `--docs`); returns the report."""
    notes = "".join(f"\n`{scheme}` not run: {why}\n" for scheme, why in refused.items())
    report = (
        f"Demo dataset, {args.mode}, {args.epochs} epochs, seeds {args.seeds}, `{command}`\n\n{table(rows)}\n{notes}"
    )
    args.out.write_text(report)
    if args.docs:
        write_into_docs(args.docs, f"```bash\n{command}\n```\n\n{table(rows)}\n{notes}")
    return report


def write_into_docs(name: str, text: str) -> None:
    start, end = f"<!-- schemes:{name} -->", f"<!-- /schemes:{name} -->"
    page = DOCS_PAGE.read_text()
    if start not in page or end not in page:
        raise SystemExit(f"{DOCS_PAGE} has no markers {start} ... {end}")
    before, rest = page.split(start, 1)
    DOCS_PAGE.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    with process_switches(launched(), autotune=True):  # as `wsml train` runs: cuDNN autotuned on a GPU
        main()
