"""Data-parallel training with fastai: its `DistributedTrainer` (DistributedDataParallel through accelerate) with
wsml's loaders and shared validation loss.

- The training loader cuts the same shuffled order into global batches of `bs` x N images and gives each
  process its slice of every one, so N processes train on exactly the global batches of one process with a
  batch of `bs` x N (fastai's own DistributedDL cuts the order into N contiguous parts instead).
- Evaluation loaders split their images between the processes without padding (fastai's repeat images to
  even out the parts): every image is scored exactly once, and the scores are gathered.
"""

from __future__ import annotations

import math

import torch
from fastai.callback.core import Callback
from fastai.data.load import DataLoader
from fastai.distributed import DistributedTrainer
from fastai.torch_core import to_detach

from wsml_fast.core.distributed import all_reduce_sum, broadcast_from_main, global_batch_order, shard
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process


def check_global_batches(n_train: int, bs: int, processes: int) -> None:
    """Refuse a global batch larger than the training split: its incomplete last global batch is dropped, so no
    training step would run and every epoch would only score the same untrained model (one process instead trains
    on a split smaller than its batch as one batch)."""
    if n_train >= bs * processes:
        return
    fits = n_train // processes
    advice = f"use a batch size (--bs) of {fits} or less" if fits > 1 else "add train rows or use fewer processes"
    raise WsmlError(
        f"batch size {bs} x {processes} processes = a global batch of {bs * processes} images, more than the "
        f"{n_train} training images: no training step would run; {advice}"
    )


class ProcessLoader(DataLoader):
    """A fastai DataLoader over this process's items: for training, its slice of every global batch of the
    order process 0 drew (broadcast to all); for evaluation, its contiguous share, unpadded. Batches keep the
    dataset's own item indices, so scores and labels are found by index, whichever process made them."""

    def __init__(self, loader: DataLoader, processes: int, process: int) -> None:
        self.source, self.processes, self.process = loader, processes, process
        super().__init__(
            loader.dataset,
            bs=loader.bs,
            shuffle=loader.shuffle,
            drop_last=loader.drop_last,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            device=loader.device,
            wif=loader.wif,
        )
        self.n_inp, self.rng = loader.n_inp, loader.rng

    def get_idxs(self) -> list[int]:
        if not self.shuffle:
            return shard(self.n, self.processes, self.process).tolist()
        order = torch.as_tensor(super().get_idxs(), dtype=torch.int64)  # fastai's shuffle, as one process draws it
        order = broadcast_from_main(order).numpy()
        return global_batch_order(order, self.bs, self.processes, self.process).tolist()

    def __len__(self) -> int:
        if self.shuffle:
            return self.n // (self.bs * self.processes)
        return math.ceil(len(shard(self.n, self.processes, self.process)) / self.bs)

    def to_detach(self, b, cpu: bool = True, gather: bool = True):
        """Detach without gathering: processes may run different numbers of evaluation batches, so a gather per
        batch would wait forever; metrics and the loss are shared once, at the end of the epoch."""
        return to_detach(b, cpu, gather=False)


class ShareValidLoss(Callback):
    """Make the validation loss the mean over every process's images (each averaged only its own share)."""

    order = 49  # before the Recorder (50) reads the loss after validating

    def after_validate(self) -> None:
        loss = self.learn.recorder.loss
        total = torch.as_tensor(loss.total, dtype=torch.float64).cpu().reshape(1)
        both = all_reduce_sum(torch.cat([total, torch.tensor([float(loss.count)], dtype=torch.float64)]))
        loss.total, loss.count = both[0], int(both[1])


class DataParallel(DistributedTrainer):
    """fastai's DistributedTrainer (DistributedDataParallel through accelerate, SyncBatchNorm when asked) with
    wsml's loaders for `process`: global batches for training, unpadded shares for evaluation."""

    def __init__(self, process: Process, **kwargs) -> None:
        super().__init__(**kwargs)
        self.process = process

    def _wrap_dl(self, dl):  # fastai's (private) hook for its loaders: DistributedTrainer offers no public one
        if isinstance(dl, ProcessLoader):
            return dl
        return ProcessLoader(dl, self.process.world_size, self.process.rank)
