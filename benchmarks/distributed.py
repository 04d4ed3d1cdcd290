"""What data-parallel wsml adds to each training step: its collectives, timed against the step itself.

    torchrun --standalone --nproc_per_node 2 benchmarks/distributed.py [--bs 64] [--classes 80 9600]

Per process and step, wsml adds to DDP's gradient all-reduce: the large-loss gather of the batch's fp32 AN
losses (B x C) and item indices (B), two one-integer all-reduces (stop request, finite loss) and fastai's
gather of the scalar loss. This times them, and a whole DDP training step of the same batch (forward, backward
with the gradient all-reduce, optimizer step) of `--backbone` at `--img-size`, each the median of `--steps`.
`--smoke`: timm's test_efficientnet at 32 px, batch 4, 10 and 40 classes, 2 steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args

from wsml_fast.core.distributed import all_gather
from wsml_fast.model.classifier import build_model
from wsml_fast.schemes.large_loss.training import LargeLoss, select_over_processes
from wsml_fast.training.callbacks import everyone_agrees


def median_seconds(work, steps: int) -> float:
    for _ in range(3):  # warm-up
        work()
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(args: argparse.Namespace, classes: int) -> tuple[float, float]:
    """(median seconds of a DDP training step, of wsml's collectives for that step) at `classes` classes."""
    images = torch.randint(0, 256, (args.bs, 3, args.img_size, args.img_size), dtype=torch.uint8)
    model, _, _ = build_model(args.backbone, classes, pretrained=False, img_size=args.img_size)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    targets = torch.full((args.bs, classes), -1.0)
    targets[torch.arange(args.bs), torch.randint(0, classes, (args.bs,))] = 1.0
    losses, index = torch.rand(args.bs, classes), torch.arange(args.bs)

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(ddp(images), (targets == 1).float())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def collectives() -> None:
        select_over_processes(losses, targets == -1, 5, 0.2, LargeLoss.TEMPORARY_CORRECTION)
        all_gather(index)
        everyone_agrees(True)
        everyone_agrees(True)
        all_gather(torch.tensor([0.5]))  # fastai's gather of the smoothed loss

    return median_seconds(step, args.steps), median_seconds(collectives, args.steps * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bs", type=int, default=64, help="batch per process")
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 9600])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    smoke = {"bs": 4, "classes": [10, 40], "backbone": TINY_BACKBONE, "img_size": TINY_IMG_SIZE, "steps": 2}
    args = parse_args(parser, **smoke)
    dist.init_process_group("gloo")
    world, main_process = dist.get_world_size(), dist.get_rank() == 0
    torch.manual_seed(dist.get_rank())
    if main_process:
        print(f"{world} processes (gloo, CPU), {torch.get_num_threads()} threads each, batch {args.bs} per process")
        print(f"{'classes':>8} {'step ms':>9} {'wsml collectives ms':>20} {'share':>7} {'bytes sent per step':>20}")
    for classes in args.classes:
        step_time, added = measure(args, classes)
        sent = args.bs * classes * 4 + args.bs * 8 + 2 * 8 + 4
        if main_process:
            share = 100 * added / step_time
            print(f"{classes:>8} {1000 * step_time:>9.1f} {1000 * added:>20.2f} {share:>6.2f}% {sent:>20,}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
