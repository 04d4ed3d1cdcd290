"""Throughput of the demo training loop, and how its time splits between data loading and the model step.

    python benchmarks/throughput.py [--backbone tf_efficientnet_lite0] [--img-size 64] [--bs 32] [--batches 30]

Prints images/s for (1) the input pipeline alone, (2) the training step alone on a batch already in memory,
(3) the full loop (fastai Learner, one pass over `--batches` batches), and the share of (3) that loading takes.
All three are measured in this one run, on this machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner

from wsml_fast.callbacks import ItemIndexCallback
from wsml_fast.data import ImageLabelDataset, make_loader
from wsml_fast.losses import make_loss
from wsml_fast.model import build_model
from wsml_fast.sources import resolve_source
from wsml_fast.table import load_table
from wsml_fast.train import OPTIMIZERS


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return time.perf_counter() - start


class TrainPhaseTimer(Callback):
    """Wall time of the training phase of an epoch (validation excluded)."""

    def before_train(self) -> None:
        self.start = time.perf_counter()

    def after_train(self) -> None:
        self.seconds = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(0)
    source = resolve_source("demo", None, None, None)
    table = load_table(source)
    rows = table.rows("train")[: args.bs * args.batches]
    dataset = ImageLabelDataset(
        source.images_root,
        [table.images[i] for i in rows],
        table.observed[rows],
        args.img_size,
        augment=True,
    )
    device = torch.device("cpu")
    loader = make_loader(dataset, args.bs, True, args.workers, device)
    n_images = args.bs * args.batches

    iterator = iter(loader)
    load_s = timed(lambda: next(iterator), args.batches)

    model, _, _ = build_model(args.backbone, len(table.classes), pretrained=False, img_size=args.img_size)
    loss_func = make_loss("an", len(table.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets, _ = next(iter(loader))
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        loss_func(model(images), targets).backward()
        optimizer.step()

    step()  # warm-up
    step_s = timed(step, args.batches)

    timer = TrainPhaseTimer()
    one_batch = make_loader(
        dataset.subset(np.arange(args.bs)),
        args.bs,
        False,
        0,
        device,
    )
    learn = Learner(
        DataLoaders(loader, one_batch, device=device),
        model,
        loss_func=loss_func,
        opt_func=OPTIMIZERS["adam"],
        cbs=[ItemIndexCallback(), timer],
    )
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *_: None
    learn.fit(1, 1e-3)
    full_s = timer.seconds

    print(
        f"backbone {args.backbone} | {args.img_size}px | batch {args.bs} | workers {args.workers} | "
        f"{torch.get_num_threads()} threads | {args.batches} batches"
    )
    print(f"input pipeline alone : {n_images / load_s:8.1f} images/s")
    print(f"training step alone  : {n_images / step_s:8.1f} images/s")
    print(f"full training loop   : {n_images / full_s:8.1f} images/s")
    print(f"share of the loop spent loading data: {load_s / full_s:.0%}; model step: {step_s / full_s:.0%}")


if __name__ == "__main__":
    main()
