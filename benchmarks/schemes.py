"""Every scheme on the demo dataset with the same settings and several seeds, as a Markdown table.

    python benchmarks/schemes.py [--mode linear] [--epochs 8] [--seeds 0 1 2] [--out benchmarks/schemes.md]

Columns: test mAP (mean and spread over seeds), the large-loss schemes' `ll_fn_precision` (share of the
selected entries that really are positives) and `train_recovery_map` (mAP on the training images against
their full truth), both at the best epoch. Afterwards it prints the step-time ratio of `llct` to `an`, both
timed in one process on the same batches from epoch 2 on, when the large-loss selection is active.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from wsml_fast.config import SCHEMES, resolve
from wsml_fast.errors import WsmlError
from wsml_fast.recipes import find_recipe
from wsml_fast.sources import resolve_source
from wsml_fast.train import train


def run_scheme(scheme: str, seed: int, args: argparse.Namespace, out_root: Path) -> dict:
    recipe, name = find_recipe(None, "demo", scheme)
    options = {
        "dataset": "demo",
        "scheme": scheme,
        "seed": seed,
        "mode": args.mode,
        "epochs": args.epochs,
        "backbone": args.backbone,
        "lr": args.lr,
        "out": str(out_root / f"{scheme}-{seed}"),
    }
    config = resolve(recipe, name, options)
    run = train(config, resolve_source("demo", None, None, None))
    results = json.loads(run.file("results.json").read_text())
    metrics = pd.read_csv(run.file("metrics.csv")).set_index("epoch")
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
        lines.append(
            f"| `{scheme}` | {spread([r['test_map'] for r in runs])} | "
            f"{spread([100 * p for p in precision]) if precision else '-'} | "
            f"{spread([r['train_recovery_map'] for r in runs])} | {statistics.mean(r['seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def step_time_ratio(args: argparse.Namespace, out_root: Path) -> tuple[float, float]:
    """Median training-phase seconds per epoch of `an` and `llct` from epoch 2 on (the selection is active),
    end-to-end on the demo images, runs alternating in this one process."""
    epochs: dict[str, list[float]] = {"an": [], "llct": []}
    for repeat in range(args.timing_repeats):
        for scheme in epochs:
            recipe, name = find_recipe(None, "demo", scheme)
            options = {
                "dataset": "demo",
                "scheme": scheme,
                "epochs": 3,
                "backbone": args.backbone,
                "out": str(out_root / f"timing-{scheme}-{repeat}"),
            }
            run = train(resolve(recipe, name, options), resolve_source("demo", None, None, None))
            epochs[scheme] += pd.read_csv(run.file("metrics.csv"))["train_seconds"].iloc[1:].tolist()
    return statistics.median(epochs["an"]), statistics.median(epochs["llct"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="linear", choices=("linear", "end-to-end", "linear-init"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--lr", type=float, default=None, help="default: the demo recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--timing-repeats", type=int, default=2, help="0 skips the step-time ratio")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/schemes.md"))
    args = parser.parse_args()

    rows: dict[str, list[dict]] = {}
    refused: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="wsml-schemes-"))
    for scheme in args.schemes:
        try:
            rows[scheme] = [run_scheme(scheme, seed, args, tmp) for seed in args.seeds]
        except WsmlError as exc:  # e.g. iu without observed negatives: a row that says why
            refused[scheme] = str(exc)
    command = "python benchmarks/schemes.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k != "out" and v is not None
    )
    notes = "".join(f"\n`{scheme}` not run: {why}\n" for scheme, why in refused.items())
    report = (
        f"Demo dataset, {args.mode}, {args.epochs} epochs, seeds {args.seeds}, `{command}`\n\n{table(rows)}\n{notes}"
    )
    args.out.write_text(report)
    print(report)
    if args.timing_repeats:
        an, llct = step_time_ratio(args, tmp)
        ratio = f"training epoch (end-to-end, epochs 2+): an {an:.2f}s, llct {llct:.2f}s, ratio llct/an {llct / an:.3f}"
        args.out.write_text(f"{report}\n{ratio}\n")
        print(ratio)


if __name__ == "__main__":
    main()
