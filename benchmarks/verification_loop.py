"""The verification loop, measured: train, ask for answers (`wsml suggest`), answer them from the truth, merge them
(`wsml merge`) and train again with the same seed; and `wsml complete --target-precision 0.9`.

    python benchmarks/verification_loop.py [--sets demo rare] [--seeds 0 1 2] [--budgets 0.01 0.05]
                                           [--strategies likely-positive uncertain random] [--target-precision 0.9]
                                           [--mode linear|end-to-end] [--ema DECAY]

Data, made in a temporary folder by the demo's generator (seed 0; train rows keep one observed positive):
`demo` is the built-in demo (10 digit classes, 1-4 digits an image); `rare` draws each digit in one of 4 colours,
a class per (colour, digit), 1-3 digits an image: 40 classes whose positives are rarer.

Every run is the demo recipe (`--ema 0` leaves out its average of the weights, as every figure in
benchmarks/RESULTS.md was measured), by default in `--mode linear`: tf_efficientnet_lite0's ImageNet features at
64 px are extracted once and cached (the cache key holds the label file's stamp, so a run on merged labels extracts
them again), and the head alone trains. That takes seconds a run on 2 CPU cores, where the recipe's end-to-end runs
(`--mode end-to-end`, the model `wsml train` makes) take minutes.

Per set and seed: a run on the observed labels (before); for each strategy and budget (a share of the
unobserved train entries) `suggest` on the train split with that run, each entry answered from truth.csv (an
annotator who is never wrong), `merge` into observed.csv and the same seed trained on the merged labels (after).
Then `complete` on the train split with the first run (its held-out estimate of the precision), its additions
measured against the training truth, and the same seed trained on the completed labels; its thresholds are also
applied to the test split, whose precision is measured on all entries and on those left once one positive an image
is taken out at random (as the training split's observed positive is): where the estimate and the training figure
part. Prints a Markdown table per set
(mean ± spread over the seeds), whether the default strategy's gain reaches twice `random`'s, and the completion's
figures. `--strategies` without a name measures `complete` alone (two training runs a set and seed).

`--smoke`: timm's test_efficientnet at 32 px without pretrained weights, 2 epochs, one seed, the 5% budget, tiny
sets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, TINY_SPLITS, parse_args, scratch

from wsml_fast.data.answers import truth_answers
from wsml_fast.data.demo import make_demo_dataset
from wsml_fast.data.labels import read_label_csv
from wsml_fast.data.merge import merge_answers
from wsml_fast.data.sources import TRUTH, DatasetFiles, from_csv, from_folder
from wsml_fast.data.table import PartialLabelTable, load_table
from wsml_fast.inference.complete import Targets, complete
from wsml_fast.inference.suggest import DEFAULT_STRATEGY, STRATEGIES, suggest
from wsml_fast.inference.trained import TrainedModel, load_model
from wsml_fast.training.config import resolve
from wsml_fast.training.recipes import find_recipe
from wsml_fast.training.run import train
from wsml_fast.training.runfolder import RESULTS

SETS = {  # the demo generator's variants
    "demo": {},
    "rare": {"colours": 4, "digits": (1, 3)},
}


@dataclass
class Asked:
    """One strategy at one budget on one seed."""

    budget: int
    positives: int  # answers that were 1
    after: float  # test mAP trained on the merged labels


@dataclass
class Completed:
    added: int
    estimated: float  # `complete`'s held-out estimate of the precision on valid
    precision: float
    recall: float
    after: float  # test mAP trained on the completed labels
    on_test: tuple[float, float]  # precision of the thresholds on test: all entries; one positive an image out


@dataclass
class SetResults:
    name: str
    classes: int
    train_images: int
    unobserved: int
    unobserved_positives: int
    before: dict[int, float] = field(default_factory=dict)  # seed -> test mAP on the observed labels
    asked: dict[tuple[str, float], dict[int, Asked]] = field(default_factory=dict)  # (strategy, share) -> seed ->
    completed: dict[int, Completed] = field(default_factory=dict)


class Runner:
    """Trains the demo recipe (`--mode`, linear by default) on a data source, quietly: the runs' own lines go to a
    log file."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.log = args, work / "runs.log"
        self.seconds: list[float] = []

    def test_map(self, seed: int, out: Path, **data: str) -> float:
        recipe, name = find_recipe(None, "demo", self.args.scheme)
        options = {"scheme": self.args.scheme, "mode": self.args.mode, "seed": seed, "out": str(out), **data}
        if self.args.smoke:
            options |= {"backbone": TINY_BACKBONE, "pretrained": False, "img_size": TINY_IMG_SIZE, "bs": 8}
        if self.args.epochs:
            options["epochs"] = self.args.epochs
        if self.args.ema is not None:
            options["ema"] = self.args.ema
        config = resolve(recipe, name, options)
        source = from_folder(Path(config.data)) if config.data else from_csv(Path(config.csv), Path(config.images))
        started = time.perf_counter()
        with self.log.open("a") as log, contextlib.redirect_stdout(log):
            run = train(config, source)
        self.seconds.append(time.perf_counter() - started)
        return json.loads(run.file(RESULTS).read_text())["test_map"]


def answered_and_merged(source: DatasetFiles, images: list[str], classes: list[str], folder: Path) -> tuple[Path, int]:
    """observed.csv with the asked entries answered from truth.csv merged in, in `folder` beside a link to the
    truth (where `--csv` finds it); and how many answers were positive."""
    folder.mkdir(parents=True)
    answers = truth_answers(read_label_csv(source.truth_csv, complete=True), images, classes)
    answers.to_csv(folder / "answers.csv", index=False)
    merge_answers(source.observed_csv, folder / "answers.csv", folder / "observed.csv")
    (folder / TRUTH).symlink_to(source.truth_csv.resolve())
    return folder / "observed.csv", int(answers["answer"].sum())


def share_true(truth: np.ndarray) -> float:
    return float(truth.mean()) if truth.size else float("nan")


def precision_on_test(
    model: TrainedModel, table: PartialLabelTable, cuts: np.ndarray, seed: int
) -> tuple[float, float]:
    """The precision of the test entries at or above `cuts`: among all of them, and among those left once one
    positive an image, drawn at random, is taken out (the demo observes one such positive of each training image, and
    `complete` adds from the rest). Dense test x classes: a demo's few hundred images."""
    rows = table.rows("test")
    probabilities = model.probabilities([table.source.images_root / table.images[i] for i in rows])
    truth = table.truth.take(rows).to_dense() == 1
    taken = np.zeros_like(truth)
    rng = np.random.default_rng(seed)
    for image, positives in enumerate(truth):
        taken[image, rng.choice(np.flatnonzero(positives))] = True
    passed = probabilities >= cuts[None, :]
    return share_true(truth[passed]), share_true(truth[passed & ~taken])


def measure_set(name: str, args: argparse.Namespace, runner: Runner, work: Path) -> SetResults:
    sizes = TINY_SPLITS if args.smoke else None
    source = from_folder(make_demo_dataset(work / name, seed=0, sizes=sizes, **SETS[name]))
    table = load_table(source)
    rows = table.rows("train")
    unobserved = len(rows) * len(table.classes) - len(table.observed_of("train").keys)
    true_rows, true_cols = table.train_truth().entries(1)
    unobserved_positives = int((table.observed_of("train").lookup(true_rows, true_cols) < 0).sum())
    results = SetResults(name, len(table.classes), len(rows), unobserved, unobserved_positives)
    for seed in args.seeds:
        base = work / f"{name}-{seed}"
        results.before[seed] = runner.test_map(seed, base / "run", data=str(source.observed_csv.parent))
        model = load_model(base / "run")
        print(f"{name} seed {seed}: test mAP {results.before[seed]:.2f} on the observed labels", flush=True)
        for strategy in args.strategies:
            for share in args.budgets:
                budget = max(1, round(share * unobserved))
                found = suggest(model, source, "train", strategy, budget, seed=seed)
                folder = base / f"{strategy}-{budget}"
                merged, positives = answered_and_merged(source, found.images, found.classes, folder)
                after = runner.test_map(seed, folder / "run", csv=str(merged), images=str(source.images_root))
                results.asked.setdefault((strategy, share), {})[seed] = Asked(budget, positives, after)
                print(
                    f"{name} seed {seed}: {strategy} {budget} answers ({positives} positive): test mAP {after:.2f} "
                    f"({after - results.before[seed]:+.2f})",
                    flush=True,
                )
        completion = complete(model, source, "train", Targets(args.target_precision), base / "completed")
        after = runner.test_map(seed, base / "completed-run", data=str(base / "completed"))
        precision, recall = completion.measured.positives
        on_test = precision_on_test(model, table, completion.cuts.positive, seed)
        added, estimated = completion.additions.count(1), completion.cuts.held_out
        results.completed[seed] = Completed(added, estimated, precision, recall, after, on_test)
        print(f"{name} seed {seed}: {completion.summary()} | test mAP {after:.2f}", flush=True)
    return results


def spread(values: list[float], places: int = 2, signed: bool = False) -> str:
    """Mean ± population standard deviation over the seeds (the mean alone for one seed); NaN left out."""
    values = [v for v in values if v == v]  # NaN: a figure of nothing (no entry added)
    if not values:
        return "-"
    mean = f"{statistics.mean(values):{'+' if signed else ''},.{places}f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.pstdev(values):,.{places}f}"


def table(results: SetResults) -> str:
    seeds = list(results.before)
    lines = [
        "| strategy | budget | answers positive | test mAP before | after | gain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (strategy, share), runs in results.asked.items():
        budget = runs[seeds[0]].budget
        after = [runs[s].after for s in seeds]
        gains = [runs[s].after - results.before[s] for s in seeds]
        positive = [100 * runs[s].positives / runs[s].budget for s in seeds]
        lines.append(
            f"| `{strategy}` | {budget:,} ({100 * share:g}%) | {spread(positive, 1)}% | "
            f"{spread([results.before[s] for s in seeds])} | {spread(after)} | {spread(gains, signed=True)} |"
        )
    return "\n".join(lines)


def mean_gain(results: SetResults, strategy: str, share: float) -> float:
    runs = results.asked[(strategy, share)]
    return statistics.mean(runs[s].after - results.before[s] for s in results.before)


def goal_lines(results: SetResults, args: argparse.Namespace) -> list[str]:
    """Whether the default strategy's mean gain is at least twice `random`'s (and a gain at all), per budget."""
    if DEFAULT_STRATEGY not in args.strategies or "random" not in args.strategies:
        return []
    lines = []
    for share in args.budgets:
        default, random = mean_gain(results, DEFAULT_STRATEGY, share), mean_gain(results, "random", share)
        met = default > 0 and default >= 2 * random
        ratio = f" ({default / random:.1f}x)" if random > 0 else ""
        lines.append(
            f"goal at {100 * share:g}%: {DEFAULT_STRATEGY} gain {default:+.2f} vs random {random:+.2f}{ratio}: "
            f"{'met' if met else 'not met'} (at least twice random's gain)"
        )
    return lines


def completion_line(results: SetResults, args: argparse.Namespace) -> str:
    seeds, done = list(results.before), results.completed

    def figure(name: str, places: int = 3, at: int | None = None) -> str:
        return spread([getattr(done[s], name) if at is None else getattr(done[s], name)[at] for s in seeds], places)

    measured = [done[s].precision for s in seeds if done[s].precision == done[s].precision]
    near = measured and abs(statistics.mean(measured) - args.target_precision) <= 0.05
    return (
        f"complete --target-precision {args.target_precision:g} (train): {figure('added', 0)} positives added, "
        f"precision {figure('precision')} and recall {figure('recall')} on the training truth "
        f"({'' if near else 'not '}within 0.05 of {args.target_precision:g}; estimated on valid held out "
        f"{figure('estimated')}); test mAP trained on the completed labels "
        f"{figure('after', 2)} against {spread([results.before[s] for s in seeds])} on the original ones; its "
        f"thresholds on the test split: precision {figure('on_test', at=0)} on all entries, "
        f"{figure('on_test', at=1)} once one positive an image is taken out"
    )


def report(results: SetResults, args: argparse.Namespace) -> None:
    share = 100 * results.unobserved_positives / results.unobserved
    print(
        f"\n{results.name}: {results.classes} classes, {results.train_images:,} train images, "
        f"{results.unobserved:,} unobserved train entries ({share:.1f}% of them positive); seeds "
        f"{' '.join(map(str, results.before))}\n"
    )
    if results.asked:
        print(table(results) + "\n")
    for line in [*goal_lines(results, args), completion_line(results, args)]:
        print(f"- {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.05], help="shares of the unobserved")
    parser.add_argument(
        "--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES), help="none: `complete` alone"
    )
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--scheme", default="an")
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo recipe's")
    parser.add_argument("--mode", default="linear", choices=("linear", "end-to-end"), help="the runs' training mode")
    parser.add_argument("--ema", type=float, default=None, help="the runs' --ema (default: the demo recipe's; 0: none)")
    args = parse_args(parser, seeds=[0], epochs=2, budgets=[0.05])
    load = os.getloadavg()[0]
    print(
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()} (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), load average {load:.1f} at start; demo recipe, "
        f"--mode {args.mode}, {TINY_BACKBONE + ' (smoke)' if args.smoke else 'tf_efficientnet_lite0 at 64 px'}, "
        f"scheme {args.scheme}{'' if args.ema is None else f', --ema {args.ema:g}'}",
        flush=True,
    )
    started = time.perf_counter()
    with scratch("wsml-loop-") as work:
        runner = Runner(args, work)
        measured = [measure_set(name, args, runner, work) for name in args.sets]
    for results in measured:
        report(results, args)
    print(
        f"\n{len(runner.seconds)} training runs, {statistics.mean(runner.seconds):.0f} s a run on average; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
