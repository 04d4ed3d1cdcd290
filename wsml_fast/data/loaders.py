"""Images and labels to batches: a Dataset of (uint8 image, label row, item index) and fastai DataLoaders.

The item index travels with every sample so that callbacks can find a sample's stored labels (permanent
label correction keeps them in the main process). Images stay uint8 until the model normalizes them.
"""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import albumentations
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.table import PartialLabelTable


def make_transform(size: int, train: bool, hflip: bool, seed: int = 0) -> albumentations.Compose:
    """Resize to a square; during training optionally flip horizontally."""
    steps = [albumentations.Resize(size, size)]
    if train and hflip:
        steps.append(albumentations.HorizontalFlip(p=0.5))
    return albumentations.Compose(steps, seed=seed)


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes for 16-bit grayscale (PNG, TIFF, PGM)
BATCH_NORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """HxWx3 uint8 from any PIL mode that has a fixed range.

    16-bit grayscale keeps its top 8 bits (PIL's `convert` would clip every value above 255 to white);
    mode I (32-bit integers, what PIL makes of 16-bit PGM) is read as 16-bit too. 16-bit RGB(A) and
    grayscale+alpha PNGs are already 8-bit RGB(A) when PIL opens them; alpha is dropped, as everywhere.
    """
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image)
        if image.mode == "I":
            values = np.clip(values, 0, 65535)
        gray = (values >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise WsmlError(
            f"{path}: 32-bit float pixels (mode F) have no fixed range; convert it to an 8- or 16-bit image"
        )
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as exc:
        raise WsmlError(f"{path}: cannot convert its pixels (mode {image.mode}) to RGB ({exc})") from None


def load_rgb(path: Path, min_size: int | None = None) -> np.ndarray:
    """HxWx3 uint8; a file that cannot be decoded names itself.

    A JPEG larger than `min_size` is decoded at reduced scale (DCT scaling, PIL's draft mode): still at least
    `min_size` on both sides, for a fraction of the decoding work.
    """
    try:
        with Image.open(path) as image:
            if min_size and image.format == "JPEG":
                image.draft("RGB", (min_size, min_size))
            return _to_rgb(image, path)
    except Image.DecompressionBombError:
        raise WsmlError(
            f"{path}: more pixels than PIL decodes ({2 * (Image.MAX_IMAGE_PIXELS or 0):,}); downscale it "
            "(wsml resizes every image to --img-size anyway)"
        ) from None
    except OSError as exc:
        detail = str(exc).splitlines()[0][:100] if str(exc) else exc.__class__.__name__
        raise WsmlError(f"{path}: cannot read image ({detail})") from None


def check_train_batches(model: torch.nn.Module, n_train: int, bs: int) -> None:
    """Refuse training batches of a single image when `model` has batch-norm layers.

    Batch norm in training mode needs more than one value per channel: a batch of one image crashes it
    where the feature map is 1x1 (fastai's "Expected more than 1 value per channel when training") and
    gives meaningless statistics elsewhere. The batch sizes follow `make_loader`'s rule for training: the
    last incomplete batch is dropped when the split is larger than `bs`, so every batch holds `bs` images;
    otherwise the one batch holds the whole split.
    """
    single = n_train == 1 or (bs == 1 and n_train > 1)
    if not single or not any(isinstance(m, BATCH_NORM) for m in model.modules()):
        return
    if n_train == 1:
        raise WsmlError(
            "the train split holds 1 image: a training batch of one image breaks the model's batch-norm "
            "layers; add train rows"
        )
    raise WsmlError("--bs 1: a training batch of one image breaks the model's batch-norm layers; use --bs 2 or more")


class ImageLabelDataset(Dataset):
    """Row i: (image as uint8 CxHxW tensor, i); its labels stay in `labels`, a store the targets callback reads
    by index (a batch's targets are made on the device, never here).

    Images are decoded no larger than needed and resized to `size` x `size`; `augment` adds random flips.
    """

    def __init__(
        self,
        root: Path,
        images: list[str],
        labels: LabelStore,
        size: int,
        augment: bool = False,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        if len(images) != labels.n_rows:
            raise ValueError(f"{len(images)} images but {labels.n_rows} label rows")
        self.root, self.images, self.size = Path(root), list(images), size
        self.augment, self.hflip, self.seed = augment, hflip, seed
        self.transform = make_transform(size, augment, hflip, seed)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = self.transform(image=load_rgb(self.root / self.images[i], self.size))["image"]
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), i

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed % 2**32)

    def _generators(self) -> list:
        return [self.transform, *self.transform.transforms]  # each transform draws from generators of its own

    def random_state(self) -> list:
        """The augmentation pipeline's generator states (for the checkpoint)."""
        return [(t.random_generator.bit_generator.state, t.py_random.getstate()) for t in self._generators()]

    def set_random_state(self, state: list) -> None:
        for transform, (numpy_state, python_state) in zip(self._generators(), state, strict=True):
            transform.random_generator.bit_generator.state = numpy_state
            transform.py_random.setstate(python_state)

    def subset(self, rows: np.ndarray) -> ImageLabelDataset:
        images = [self.images[i] for i in rows]
        labels = self.labels.take(rows)
        return ImageLabelDataset(self.root, images, labels, self.size, self.augment, self.hflip, self.seed)

    def without_augmentation(self, labels: LabelStore | None = None) -> ImageLabelDataset:
        """The same images, unaugmented (feature extraction, scoring), optionally with other labels."""
        labels = self.labels if labels is None else labels
        return ImageLabelDataset(self.root, self.images, labels, self.size, False)


def process_seed(seed: int, rank: int) -> int:
    """The augmentation seed of process `rank`: `seed` itself in process 0 (so a single-process run draws as it
    always did), and one derived from (seed, rank) in every other process of a data-parallel run, whose images
    would otherwise all get the same flips."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _init_worker(rank: int) -> None:
    """Give each worker, in each epoch, its own augmentation stream (albumentations would repeat them), and
    leave Ctrl-C to the main process, which stops training at the next batch boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = get_worker_info()
    info.dataset.d.dataset.reseed(process_seed(info.seed, rank))


def default_workers() -> int:
    """Worker processes from the core count: none on small machines, where they cost more than they save."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def make_loader(dataset: ImageLabelDataset, bs: int, train: bool, workers: int, device: torch.device, rank: int = 0):
    """A fastai DataLoader yielding (input, item index) with one input, on `device`, for process `rank` (whose
    workers draw their own augmentations)."""
    from fastai.data.load import DataLoader

    loader = DataLoader(
        dataset,
        bs=bs,
        shuffle=train,
        drop_last=train and len(dataset) > bs,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        device=device,
        wif=partial(_init_worker, rank),
    )
    loader.n_inp = 1
    return loader


def split_dataset(table: PartialLabelTable, split: str, size: int) -> ImageLabelDataset:
    """The images of `split` with the labels it is scored against (the truth where known), unaugmented."""
    images = [table.images[i] for i in table.rows(split)]
    return ImageLabelDataset(table.source.images_root, images, table.eval_labels(split), size)
