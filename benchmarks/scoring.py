"""`python benchmarks/scoring.py [--images 125000] [--classes 9600] [--labelled 8]`: how long mAP takes at
OpenImages scale with `APAccumulator` (batches in, only the labelled entries kept, one sort by class), against
sklearn's `average_precision_score` class by class (timed on a sample of classes and scaled up).

Labels are OpenImages-like: `--labelled` entries a row (half positive), the rest unlabelled (-1); scores are
random. `--dense` labels every entry instead (a full truth, as COCO's: 40,137 x 80). `--smoke`: 2,000 x 50.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score
from smoke import parse_args

from wsml_fast.model.metrics import APAccumulator


def batches(args: argparse.Namespace, rng: np.random.Generator):
    """Scores and labels (B x C, -1 unlabelled) batch by batch."""
    for start in range(0, args.images, args.bs):
        size = min(args.bs, args.images - start)
        scores = rng.random((size, args.classes), dtype=np.float32)
        if args.dense:
            labels = (rng.random((size, args.classes)) < 0.05).astype(np.float32)
        else:
            labels = np.full((size, args.classes), -1.0, dtype=np.float32)
            cols = rng.integers(0, args.classes, (size, args.labelled))
            labels[np.arange(size)[:, None], cols] = rng.integers(0, 2, (size, args.labelled))
        yield scores, labels


def sklearn_seconds_per_class(classes: np.ndarray, scores: np.ndarray, positive: np.ndarray, sample: int) -> float:
    """sklearn's AP of each class of a sample (entries grouped by class first, which the dense loop gets free)."""
    order = np.argsort(classes, kind="stable")
    classes, scores, positive = classes[order], scores[order], positive[order]
    bounds = np.searchsorted(classes, np.arange(sample + 1))
    start = time.perf_counter()
    for c in range(sample):
        truth = positive[bounds[c] : bounds[c + 1]]
        if truth.any() and not truth.all():
            average_precision_score(truth, scores[bounds[c] : bounds[c + 1]])
    return (time.perf_counter() - start) / sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=125_000)
    parser.add_argument("--classes", type=int, default=9_600)
    parser.add_argument("--labelled", type=int, default=8)
    parser.add_argument("--dense", action="store_true")
    parser.add_argument("--bs", type=int, default=512)
    parser.add_argument("--sklearn-sample", type=int, default=300)
    args = parse_args(parser, images=2_000, classes=50, labelled=4, bs=256, sklearn_sample=20)
    accumulator, adding = APAccumulator(), 0.0
    for scores, labels in batches(args, np.random.default_rng(0)):
        start = time.perf_counter()
        accumulator.add(scores, labels)
        adding += time.perf_counter() - start
    start = time.perf_counter()
    result = accumulator.result()
    scoring = time.perf_counter() - start
    kept, labelled = accumulator.n_entries, accumulator.entries()
    entries = (labelled.classes, labelled.scores, labelled.positive)
    per_class = sklearn_seconds_per_class(*entries, min(args.sklearn_sample, args.classes))
    print(f"{args.images:,} images x {args.classes:,} classes, {'dense truth' if args.dense else 'partial labels'}")
    print(
        f"labelled entries kept: {kept:,} ({sum(a.nbytes for a in entries) / 2**20:,.0f} MiB; dense float32 N x C: "
        f"{args.images * args.classes * 4 / 2**30:,.2f} GiB)"
    )
    print(
        f"adding the batches: {adding:.2f} s; per-class AP of all classes, one sort: {scoring:.2f} s "
        f"(mAP {result.map:.2f}, {len(result.per_class):,} classes scored, {len(result.skipped):,} skipped)"
    )
    print(f"sklearn class by class: {per_class * 1e3:.2f} ms a class, {per_class * args.classes:.1f} s for all")


if __name__ == "__main__":
    main()
