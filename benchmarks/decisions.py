"""Decisions on the demo: the F1 family on the test split at one threshold of 0.5 for every class, against the
per-class thresholds fitted on the valid split (`f1`, and `precision:0.9`), over several seeds.

    python benchmarks/decisions.py [--scheme an] [--seeds 0 1 2] [--epochs N]

Each seed trains the demo recipe's default end-to-end run once (`wsml train --seed S`), whose end fits the `f1`
thresholds; `wsml calibrate --thresholds precision:0.9` refits them on the same valid split and `wsml eval`
scores the test split again. Prints a Markdown table: OF1, CF1, OP and CP, mean and spread over the seeds.

`--smoke`: timm's test_efficientnet at 32 px, 2 epochs, one seed, on a demo of a few dozen images.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args, scratch, tiny_demo

from wsml_fast.data.sources import resolve_source
from wsml_fast.inference.calibrate import calibrate
from wsml_fast.inference.evaluate import evaluate
from wsml_fast.inference.trained import load_model
from wsml_fast.model.decisions import ThresholdRule
from wsml_fast.training.config import resolve
from wsml_fast.training.recipes import find_recipe
from wsml_fast.training.run import train
from wsml_fast.training.runfolder import RESULTS

FIGURES = ("of1", "cf1", "op", "cp")
PRECISION_RULE = "precision:0.9"


def one_seed(args: argparse.Namespace, seed: int, folder: Path) -> dict[str, dict[str, float]]:
    """The test F1 family of one seed's run: at 0.5, at its f1 thresholds, at precision:0.9 thresholds."""
    recipe, name = find_recipe(None, "demo", args.scheme)
    options = {"scheme": args.scheme, "seed": seed, "out": str(folder / f"seed-{seed}")}
    options |= {"dataset": "demo"} if args.data is None else {"data": str(args.data)}
    if args.smoke:
        options |= {"backbone": TINY_BACKBONE, "pretrained": False, "img_size": TINY_IMG_SIZE, "bs": 8}
    if args.epochs:
        options["epochs"] = args.epochs
    config = resolve(recipe, name, options)
    source = resolve_source(config.dataset, config.data, config.csv, config.images)
    run = train(config, source)
    test = json.loads(run.file(RESULTS).read_text())["test_f1"]
    calibrate(load_model(run.path), source, ThresholdRule.parse(PRECISION_RULE))
    strict = evaluate(load_model(run.path), source, "test", config.map_convention).f1_family()
    return {"0.5": test["at_0.5"], "f1": test["at_thresholds"], PRECISION_RULE: strict["at_thresholds"]}


def table(runs: list[dict[str, dict[str, float]]]) -> str:
    def spread(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"

    lines = ["| thresholds | " + " | ".join(f.upper() for f in FIGURES) + " |", "| --- |" + " --- |" * len(FIGURES)]
    for variant in ("0.5", "f1", PRECISION_RULE):
        cells = [spread([run[variant][figure] for run in runs]) for figure in FIGURES]
        lines.append(f"| {variant if variant != '0.5' else '0.5 for every class'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", default="an")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo recipe's")
    args = parse_args(parser, seeds=[0], epochs=2)
    with scratch("wsml-decisions-") as folder:
        args.data = tiny_demo(folder) if args.smoke else None
        runs = []
        for seed in args.seeds:  # each seed's figures as they come, so a stopped benchmark keeps them
            runs.append(one_seed(args, seed, folder))
            print(f"seed {seed}: " + "; ".join(f"{v}: {runs[-1][v]}" for v in runs[-1]), flush=True)
    print(f"test split, scheme {args.scheme}, seeds {' '.join(map(str, args.seeds))} (percent):")
    print(table(runs))


if __name__ == "__main__":
    main()
