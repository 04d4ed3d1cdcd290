"""`--ema DECAY`: an exponential moving average of the weights, validated beside them after every epoch.

timm's `ModelEmaV3` keeps the average, with its warm-up (the decay grows with the optimizer steps towards DECAY, so
the first steps' untrained weights do not linger). It averages what the stage trains: the whole classifier end to
end, the head alone on cached features. Batch-norm running statistics are averaged like the weights (timm's
default: the statistics then belong to the averaged weights' recent past, not to the last batch's weights); the
integer counter `num_batches_tracked` is copied. The average lives as long as its stage: linear-init's end-to-end
stage starts a new one (warm-up and all) from the weights it starts from, the best of the linear stage.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3

from wsml_fast.core.distributed import bare, broadcast_from_main
from wsml_fast.learning.contract import AVERAGED, CheckpointedState, WsmlCallback
from wsml_fast.model.metrics import MapMetric
from wsml_fast.model.scoring import scored_batches


class WeightAverageCallback(WsmlCallback, CheckpointedState):
    """Update the average after every optimizer step (a step that gradient accumulation skips is none), and after
    every epoch record its valid mAP (`valid_map_ema`, scored as `valid_map` is: `MapMetric`, over every process's
    share of the split). In a data-parallel run every process holds process 0's average when it is scored and saved
    (each process's batch-norm statistics follow its own batches). The average and its step count are checkpointed;
    `averaged_weights` is the model's state dict with the average in place of the part it averages."""

    order = 5  # before_fit: before DataParallel (11) wraps the model (or converts its batch norm for --sync-bn)

    def __init__(self, decay: float, model: torch.nn.Module, precision: str, convention: str) -> None:
        self.decay, self.model, self.precision, self.convention = decay, model, precision, convention
        self.average: ModelEmaV3 | None = None
        self.prefix = ""  # where the averaged part sits in the model ("" the whole, "head." the head)
        self.inputs: str | None = None  # the inputs of the stage the average belongs to
        self.step = 0  # optimizer steps averaged in this stage
        self.saved: dict | None = None  # a checkpoint's average, taken up if the resumed fit is of its stage

    def before_fit(self) -> None:
        if not self.run:
            return
        trained = bare(self.learn.model)
        self.prefix = next(f"{name}." if name else "" for name, part in self.model.named_modules() if part is trained)
        self.average = ModelEmaV3(trained, decay=self.decay, use_warmup=True)
        self.inputs, self.step = self.stage.inputs, 0
        if self.saved is not None and self.saved["inputs"] == self.inputs:  # resumed in the middle of its stage
            self.average.module.load_state_dict(self.saved["weights"])
            self.step = self.saved["step"]
        self.saved = None

    def after_step(self) -> None:
        if self.run:
            self.step += 1
            self.average.update(bare(self.learn.model), step=self.step)

    def after_epoch(self) -> None:
        if not self.run:
            return
        for value in self.average.module.state_dict().values():
            value.copy_(broadcast_from_main(value))
        metric = MapMetric(self.convention)
        labels = self.learn.batch_targets.labels_of(self.learn.dls.valid.dataset, self.device)
        for scores, (index,) in scored_batches(self.average.module, self.learn.dls.valid, self.precision, self.device):
            metric.add(scores, labels.dense(index))
        self.run_state.record(**{AVERAGED: metric.value})

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        averaged = {self.prefix + name: value for name, value in self.average.module.state_dict().items()}
        return {**self.model.state_dict(), **averaged}

    def state_dict(self) -> dict:
        weights = {} if self.average is None else self.average.module.state_dict()
        return {"inputs": self.inputs, "step": self.step, "weights": weights}

    def load_state_dict(self, state: dict) -> None:
        self.saved = state
