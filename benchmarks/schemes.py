"""Every registered scheme on the demo dataset with the same settings and several seeds, as a Markdown table.

    python benchmarks/schemes.py [--mode linear] [--epochs 8] [--seeds 0 1 2] [--runs an llr llr+boost-lu=5 ...]
                                 [--out benchmarks/schemes.md] [--readme NAME]

A run is a registered scheme, optionally with `+option=value` settings (`llr+boost-lu=5`); by default every
scheme of the registry, and `llr` with the BoostLU head. `--readme NAME` also writes the table into README.md
between the markers `<!-- schemes:NAME -->` and `<!-- /schemes:NAME -->`.

Columns: test mAP (mean and spread over seeds), the large-loss schemes' `ll_fn_precision` (share of the
selected entries that really are positives) and `train_recovery_map` (mAP on the training images against
their full truth), both at the best epoch. Afterwards it prints the step-time ratio of `llct` to `an`: median
training-step times in one Learner on the same images whose batches alternate between `an` and `llct` (the
real large-loss callback, active from epoch 2 on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.torch_core import set_seed

from wsml_fast.callbacks import RunState, TargetsCallback
from wsml_fast.config import resolve
from wsml_fast.data import ImageLabelDataset, make_loader
from wsml_fast.errors import WsmlError
from wsml_fast.inference import pick_device
from wsml_fast.learner import OPTIMIZERS
from wsml_fast.losses import AssumeNegativeLoss
from wsml_fast.model import build_model
from wsml_fast.recipes import find_recipe
from wsml_fast.runfolder import METRICS, RESULTS
from wsml_fast.schemes import SCHEMES
from wsml_fast.schemes.large_loss.training import LargeLossCallback
from wsml_fast.sources import resolve_source
from wsml_fast.table import load_table
from wsml_fast.train import train

DEFAULT_RUNS = [*SCHEMES, "llr+boost-lu=5"]
README = Path(__file__).parents[1] / "README.md"


def parse_run(run: str) -> tuple[str, dict]:
    """`llr+boost-lu=5` -> ("llr", {"boost_lu": 5.0})."""
    scheme, *settings = run.split("+")
    options = {}
    for setting in settings:
        key, value = setting.split("=")
        options[key.replace("-", "_")] = float(value)
    return scheme, options


def run_scheme(run: str, seed: int, args: argparse.Namespace, out_root: Path) -> dict:
    scheme, extra = parse_run(run)
    recipe, name = find_recipe(None, "demo", scheme)
    options = {
        "dataset": "demo",
        "scheme": scheme,
        "seed": seed,
        "mode": args.mode,
        "epochs": args.epochs,
        "backbone": args.backbone,
        "lr": args.lr,
        "out": str(out_root / f"{run}-{seed}"),
        **extra,
    }
    config = resolve(recipe, name, options)
    run = train(config, resolve_source("demo", None, None, None))
    results = json.loads(run.file(RESULTS).read_text())
    metrics = pd.read_csv(run.file(METRICS)).set_index("epoch")
    best = metrics.loc[results["best_epoch"]]
    return {
        "test_map": results["test_map"],
        "ll_fn_precision": best.get("ll_fn_precision"),
        "train_recovery_map": best.get("train_recovery_map"),
        "seconds": results["train_seconds"],
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
        "| scheme | test mAP | ll_fn_precision | train recovery mAP | seconds per run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for scheme, runs in rows.items():
        precision = [r["ll_fn_precision"] for r in runs if r["ll_fn_precision"] is not None]
        name = scheme.replace("+", " --").replace("=", " ")
        lines.append(
            f"| `{name}` | {spread([r['test_map'] for r in runs])} | "
            f"{spread([100 * p for p in precision]) if precision else '-'} | "
            f"{spread([r['train_recovery_map'] for r in runs])} | {statistics.mean(r['seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


class AlternatingLargeLoss(LargeLossCallback):
    """LL-Ct on odd training batches, plain AN on even ones: the two interleave batch by batch, so drifts of
    the machine's speed hit both alike."""

    def after_loss(self) -> None:
        if self.learn.iter % 2:
            super().after_loss()


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


def step_time_ratio(args: argparse.Namespace) -> tuple[float, float, int]:
    """Median seconds of an end-to-end training step under `an` and under `llct` (the real callback, Delta as
    in the demo recipe), on the same demo images, the two alternating batch by batch in one Learner."""
    source = resolve_source("demo", None, None, None)
    table = load_table(source)
    recipe, name = find_recipe(None, "demo", "llct")
    config = resolve(recipe, name, {"dataset": "demo", "scheme": "llct", "backbone": args.backbone})
    rows = table.rows("train")[: 16 * config.bs]
    labels = table.observed[rows]
    dataset = ImageLabelDataset(source.images_root, [table.images[i] for i in rows], labels, config.img_size, True)
    device = pick_device()
    set_seed(0)
    model, _, _ = build_model(config.backbone, labels.shape[1], config.pretrained, None, config.img_size)
    timer = BatchTimer()
    large_loss = AlternatingLargeLoss("llct", config.delta_rel, labels, None, [], table.classes, None)
    loaders = [make_loader(ds, config.bs, train, 0, device) for ds, train in ((dataset, True), (dataset, False))]
    learn = Learner(
        DataLoaders(*loaders, device=device),
        model.to(device),
        loss_func=AssumeNegativeLoss(),
        opt_func=OPTIMIZERS[config.opt],
        cbs=[RunState(), TargetsCallback(), large_loss, timer],
    )
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *_: None
    learn.fit(args.timing_repeats, config.lr)
    an, llct = timer.times["an"], timer.times["llct"]
    return statistics.median(an), statistics.median(llct), min(len(an), len(llct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="linear", choices=("linear", "end-to-end", "linear-init"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--lr", type=float, default=None, help="default: the demo recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="schemes, with +option=value settings")
    parser.add_argument(
        "--timing-repeats",
        type=int,
        default=12,
        help="epochs of alternating an/llct batches for the step ratio; 0 skips",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/schemes.md"))
    parser.add_argument("--readme", help="also write the table into README.md between the markers of this name")
    args = parser.parse_args()

    rows: dict[str, list[dict]] = {}
    refused: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="wsml-schemes-"))
    command = "python benchmarks/schemes.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("out", "readme") and v is not None
    )
    for run in args.runs:
        try:
            rows[run] = [run_scheme(run, seed, args, tmp) for seed in args.seeds]
        except WsmlError as exc:  # e.g. iu without observed negatives: a row that says why
            refused[run] = str(exc)
        report = write_report(args, command, rows, refused)  # after every scheme: a long run keeps what it did
    print(report)
    if args.timing_repeats:
        an, llct, batches = step_time_ratio(args)
        ratio = (
            f"training step (end-to-end, epochs 2+, median of {batches} batches each): "
            f"an {1000 * an:.1f} ms, llct {1000 * llct:.1f} ms, ratio llct/an {llct / an:.3f}"
        )
        args.out.write_text(f"{report}\n{ratio}\n")
        print(ratio)


def write_report(args: argparse.Namespace, command: str, rows: dict[str, list[dict]], refused: dict[str, str]) -> str:
    """The table so far into `--out` (and the README with `--readme`); returns the report."""
    notes = "".join(f"\n`{scheme}` not run: {why}\n" for scheme, why in refused.items())
    report = (
        f"Demo dataset, {args.mode}, {args.epochs} epochs, seeds {args.seeds}, `{command}`\n\n{table(rows)}\n{notes}"
    )
    args.out.write_text(report)
    if args.readme:
        write_into_readme(args.readme, f"```bash\n{command}\n```\n\n{table(rows)}\n{notes}")
    return report


def write_into_readme(name: str, text: str) -> None:
    start, end = f"<!-- schemes:{name} -->", f"<!-- /schemes:{name} -->"
    readme = README.read_text()
    if start not in readme or end not in readme:
        raise SystemExit(f"README.md has no markers {start} ... {end}")
    before, rest = readme.split(start, 1)
    README.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()
