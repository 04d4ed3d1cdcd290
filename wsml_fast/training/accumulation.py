"""`--accumulate N`: one optimizer step per N batches, whose gradients add up (an effective batch of bs x N, and x
the processes of a data-parallel run). Each forward batch is still a batch of its own to the scheme: the large-loss
selection ranks the losses of bs entries' batch (x the processes), not of the effective batch."""

from __future__ import annotations

from fastai.callback.core import CancelBatchException
from fastai.callback.training import GradientAccumulation


class EpochGradientAccumulation(GradientAccumulation):
    """fastai's GradientAccumulation over `batches` batches (its `n_acc` counts inputs: `batches` x the batch size of
    the stage's training loader, which drops its incomplete last batch), which also steps on an epoch's last batch:
    no gradient outlives its epoch, so a checkpoint holds none half accumulated and `--resume` stays exact. Where
    the epoch's batches are not a multiple of N, that last step adds fewer batches, each weighted as in a full
    step (a smaller step)."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches

    def before_fit(self) -> None:
        super().before_fit()
        self.n_acc = self.batches * self.learn.dls.train.bs  # each stage has its own batch size

    def before_step(self) -> None:
        try:
            super().before_step()
        except CancelBatchException:
            if self.learn.iter < self.learn.n_iter - 1:
                raise
            self.count = 0  # the epoch's last batch: step with what has accumulated
