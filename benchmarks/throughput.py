"""wsml's training loop against a reference-style loop, side by side, measured in one run.

    python benchmarks/throughput.py                    # CPU: tf_efficientnet_lite0, pipeline at 448 px, model at 128 px
    python benchmarks/throughput.py --gpu              # CUDA: resnet50 at 448 px, batch 16 and 64

The reference-style loop is what the papers' code does: plain PyTorch, PIL decoding, torchvision `Resize` +
`RandomHorizontalFlip` + `ToTensor` + `Normalize` in the workers, fp32 throughout. wsml's: PIL decoding at
reduced scale where possible, OpenCV resizing through albumentations, uint8 tensors to the device and
normalization there, mixed precision and channels-last on CUDA, fastai's Learner driving the loop.

Images are real JPEGs at the benchmark datasets' size (500x375, like VOC/COCO): demo digit grids upscaled and
saved at JPEG quality 90. Figures: the input pipeline alone (images/s in one process, i.e. per worker), the
training step alone on device-resident tensors, full training (images/s; one epoch per side, alternated,
best of `--repeats`), the large-loss selection's share of the step time, and last the ratios wsml / reference.
`--smoke`: timm's test_efficientnet at 32 px, pipeline at 64 px, 24 JPEGs from a tiny demo, in a temporary folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from PIL import Image
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args, scratch, tiny_demo

from wsml_fast.core.process import launched, process_switches, resolve_precision
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset, make_loader
from wsml_fast.data.sources import DatasetFiles, data_home, from_folder, resolve_source
from wsml_fast.data.table import load_table
from wsml_fast.model.classifier import build_model
from wsml_fast.model.scoring import AMP_DTYPES, autocast
from wsml_fast.schemes.build import SchemeParts
from wsml_fast.schemes.large_loss.training import LargeLoss, large_loss_losses
from wsml_fast.schemes.losses import AssumeNegativeLoss
from wsml_fast.training.callbacks import DeviceMixedPrecision
from wsml_fast.training.learner import OPTIMIZERS, wsml_learner

JPEG_SIZE = (500, 375)


def benchmark_jpegs(count: int, source: DatasetFiles) -> tuple[Path, list[str], LabelStore]:
    """`count` real JPEGs at VOC size, made once from the images of `source` (the demo), with their training
    labels."""
    table = load_table(source)
    rows = table.rows("train")[:count]
    folder = data_home().parent / "cache" / "benchmark-jpegs"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in rows:
        name = f"{i:05d}.jpg"
        if not (folder / name).exists():
            with Image.open(source.images_root / table.images[i]) as image:
                image.convert("RGB").resize(JPEG_SIZE, Image.BICUBIC).save(folder / name, quality=90)
        names.append(name)
    return folder, names, table.observed.take(rows)


class ReferenceDataset(torch.utils.data.Dataset):
    """The papers' input pipeline: PIL decode, torchvision transforms to a normalized float tensor."""

    def __init__(self, root: Path, images: list[str], labels: np.ndarray, size: int, mean, std) -> None:
        from torchvision import transforms

        self.root, self.images, self.labels = root, images, torch.from_numpy(labels)
        self.transform = transforms.Compose(
            [
                transforms.Resize((size, size)),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        with Image.open(self.root / self.images[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def per_item_rate(dataset, count: int, warmup: int = 20) -> float:
    for i in range(warmup):  # first calls pay for thread pools and allocations
        dataset[-1 - i]
    start = time.perf_counter()
    for i in range(count):
        dataset[i % len(dataset)]
    return count / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_rate(step, batch_size: int, steps: int, device: torch.device) -> float:
    step()  # warm-up (autotuning, allocator)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


class TrainPhaseTimer(Callback):
    def before_train(self) -> None:
        self.start = time.perf_counter()

    def after_train(self) -> None:
        synchronize(self.dls.device)
        self.seconds = time.perf_counter() - self.start


def training_learner(
    dataset: ImageLabelDataset, model: torch.nn.Module, bs: int, workers: int, precision: str, timer: Callback
) -> Learner:
    """wsml's Learner (targets made on the device from the label store, wsml's mixed precision), without the run
    folder's callbacks; it trains on AN and validates on the first batch of `dataset`."""
    device = next(model.parameters()).device
    loader = make_loader(dataset, bs, True, workers, device)
    valid = make_loader(dataset.subset(np.arange(bs)), bs, False, 0, device)
    callbacks = [timer] + ([DeviceMixedPrecision(amp_mode=precision)] if precision in AMP_DTYPES else [])
    dls = DataLoaders(loader, valid, device=device)
    return wsml_learner(dls, model, SchemeParts(AssumeNegativeLoss()), callbacks, opt_func=OPTIMIZERS["adam"])


def compare(args: argparse.Namespace, bs: int, device: torch.device, precision: str) -> None:
    root, images, labels = benchmark_jpegs(bs * args.batches, args.source)
    dense = labels.to_dense()  # the reference keeps its labels dense, as the papers' code does
    model, size, _ = build_model(args.backbone, labels.n_classes, pretrained=False, img_size=args.img_size)
    mean, std = (model.mean.flatten() / 255).tolist(), (model.std.flatten() / 255).tolist()
    ours = ImageLabelDataset(root, images, labels, args.pipeline_size, augment=True)
    reference = ReferenceDataset(root, images, dense, args.pipeline_size, mean, std)
    figures = {
        "input pipeline, images/s per worker": (per_item_rate(ours, args.items), per_item_rate(reference, args.items)),
    }

    # training step alone, tensors already on the device
    model = model.to(device)
    if device.type == "cuda" and precision in AMP_DTYPES:
        model.use_channels_last()
    loss_func = AssumeNegativeLoss()
    uint8 = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, device=device)
    floats = ((uint8.float() / 255 - model.mean / 255) / (model.std / 255)).contiguous()
    targets = torch.from_numpy(dense[:bs]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def wsml_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            logits = model(uint8)
        scaler.scale(loss_func(logits, targets)).backward()
        scaler.step(optimizer)
        scaler.update()

    bce = torch.nn.BCEWithLogitsLoss()

    def reference_step() -> None:  # fp32, contiguous NCHW, normalized float input
        optimizer.zero_grad(set_to_none=True)
        bce(model.head(model.body(floats)), (targets == 1).float()).backward()
        optimizer.step()

    ours_step = step_rate(wsml_step, bs, args.steps, device)
    model.channels_last = False
    model.to(memory_format=torch.contiguous_format)
    reference_step_rate = step_rate(reference_step, bs, args.steps, device)
    figures["training step alone, images/s"] = (ours_step, reference_step_rate)

    # the large-loss selection (LL-Ct, k as at epoch 5 with Delta 0.5%) against one training step
    logits = torch.randn(bs, labels.n_classes, device=device)
    k = int(np.ceil(bs * labels.n_classes * 4 * 0.5 / 100))
    selection_rate = step_rate(
        lambda: large_loss_losses(logits, targets, k, LargeLoss.TEMPORARY_CORRECTION), bs, args.steps * 10, device
    )
    ll_share = ours_step / selection_rate

    # full training: wsml through fastai (resized to the model size) vs the reference loop
    train_ours = ImageLabelDataset(root, images, labels, size, augment=True)
    timer = TrainPhaseTimer()
    learn = training_learner(train_ours, model, bs, args.workers, precision, timer)
    reference_train = ReferenceDataset(root, images, dense, size, mean, std)
    torch_loader = torch.utils.data.DataLoader(
        reference_train, batch_size=bs, shuffle=True, drop_last=True, num_workers=args.workers
    )

    def wsml_epoch() -> float:
        if device.type == "cuda" and precision in AMP_DTYPES:
            model.use_channels_last()
        learn.fit(1, 1e-4)
        return len(train_ours) // bs * bs / timer.seconds

    def reference_epoch() -> float:
        model.channels_last = False
        model.to(memory_format=torch.contiguous_format)
        synchronize(device)
        start = time.perf_counter()
        for batch, target in torch_loader:
            batch, target = batch.to(device), target.to(device)
            optimizer.zero_grad(set_to_none=True)
            bce(model.head(model.body(batch)), (target == 1).float()).backward()  # input already normalized
            optimizer.step()
        synchronize(device)
        return len(torch_loader) * bs / (time.perf_counter() - start)

    # alternated, best of `--repeats`: neither side gains from running second (warm caches, clocks)
    rates = [(wsml_epoch(), reference_epoch()) for _ in range(args.repeats)]
    ours_full, reference_full = max(r[0] for r in rates), max(r[1] for r in rates)
    figures["full training, images/s"] = (ours_full, reference_full)

    print(
        f"\nbatch {bs}: {args.backbone}, model at {size} px, pipeline at {args.pipeline_size} px, "
        f"{args.workers} workers, wsml {precision} vs reference fp32"
    )
    print(f"{'':38s} {'wsml':>10s} {'reference':>10s} {'ratio':>7s}")
    for name, (a, b) in figures.items():
        print(f"{name:38s} {a:10.1f} {b:10.1f} {a / b:6.2f}x")
    print(
        f"large-loss selection: {100 * ll_share:.3f}% of a training step; full training reaches "
        f"{100 * ours_full / ours_step:.0f}% of the bare step throughput"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="ResNet-50 at 448 px, batches 16 and 64, on CUDA")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--img-size", type=int, default=None, help="model input size")
    parser.add_argument("--pipeline-size", type=int, default=448, help="input-pipeline output size")
    parser.add_argument("--bs", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, default=12, help="batches of full training")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--items", type=int, default=200, help="items timed in the input pipeline")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="full-training epochs per side, alternated; best kept")
    parser.add_argument("--precision", default="auto")
    smoke = {"backbone": TINY_BACKBONE, "img_size": TINY_IMG_SIZE, "pipeline_size": 64, "bs": [8], "batches": 3}
    args = parse_args(parser, **smoke, steps=2, items=10, repeats=1)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")
    if args.smoke:
        with scratch("wsml-throughput-") as folder:
            args.source = from_folder(tiny_demo(folder))
            run(args)
    else:
        args.source = resolve_source("demo", None, None, None)
        run(args)


def run(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if args.gpu else "cpu")
    args.backbone = args.backbone or ("resnet50" if args.gpu else "tf_efficientnet_lite0")
    args.img_size = args.img_size or (448 if args.gpu else 128)
    sizes = args.bs or ([16, 64] if args.gpu else [32])
    precision = resolve_precision(args.precision, device)
    name = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} | torch {torch.__version__}")
    for bs in sizes:
        compare(args, bs, device, precision)


if __name__ == "__main__":
    with process_switches(launched(), autotune=True):  # as `wsml train` runs: cuDNN autotuned on a GPU
        main()
