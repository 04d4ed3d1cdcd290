"""The contract of a wsml Learner: what every callback and scheme may rely on, whoever built the Learner.

`RunState` is the one owner of where a run stands (its epoch, counted from 1 across every fit and across a
resume; the stage in progress; the values callbacks add to this epoch's row; the rows of the finished epochs; why
the last fit ended early). `TargetsCallback` makes each batch's targets and keeps its item indices. wsml's other
callbacks derive from `WsmlCallback`, which reads both as typed properties, keeps no epoch counter of its own,
sits out `lr_find`'s fits (they are no part of the run) and ends a fit with a reason. A callback whose state
belongs in the checkpoint is a `CheckpointedState` (a scheme's, also beside the best weights: `SchemeState`).
`learner.wsml_learner` builds a Learner that keeps this contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException

from wsml_fast.data.labelstore import DeviceLabels

if TYPE_CHECKING:
    from wsml_fast.training.stages import StageData

MONITOR, AVERAGED = "valid_map", "valid_map_ema"  # the valid mAP of the raw weights, and of their average (--ema)


def _scored(row: dict, column: str) -> float | None:
    value = row.get(column)
    return None if value is None or np.isnan(value) else float(value)


def kept_weights(row: dict) -> str:
    """Which weights of an epoch the run keeps: "ema" where their average (--ema) scored a higher valid mAP than the
    raw weights (or the raw ones none), else "raw" (a tie keeps the raw weights)."""
    raw, averaged = _scored(row, MONITOR), _scored(row, AVERAGED)
    return "ema" if averaged is not None and (raw is None or averaged > raw) else "raw"


def epoch_score(row: dict) -> float:
    """An epoch's score, the one rule wherever a best epoch is chosen (the saved weights, the checkpoint's best
    epoch, early stopping, the run's results, the next stage's start, a tuning trial): the valid mAP of the weights
    it keeps (`kept_weights`); nan when neither was scored."""
    value = _scored(row, AVERAGED if kept_weights(row) == "ema" else MONITOR)
    return float("nan") if value is None else value


class CheckpointedState:
    """Marks a callback whose state (stored labels, label estimates, records) belongs in the checkpoint."""

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class SchemeState(CheckpointedState):
    """A scheme's learned state (stored labels, label estimates): also saved beside the best weights."""


def checkpointed_states(learn, kind: type = CheckpointedState) -> dict[str, dict]:
    return {type(cb).__name__: cb.state_dict() for cb in learn.cbs if isinstance(cb, kind)}


def model_device(learn) -> torch.device:
    """The device of a Learner's model (where its first parameter lives)."""
    return next(learn.model.parameters()).device


def in_lr_find(learn) -> bool:
    """Whether the Learner's current fit is fastai's `lr_find` (whose fits are no part of the run)."""
    return hasattr(learn, "lr_finder")


class WsmlCallback(Callback):
    """The base of wsml's callbacks. It sits out `lr_find`'s fits, as fastai's own Recorder does (`self.run` set
    once when a fit begins: those fits are no part of the run, so no epoch, state or file of the run changes); it
    offers the run state, the batch's item indices, the stage in progress and the model's device as typed
    properties; and `end_fit` ends the fit with a reason, which `learner.fit` says and returns."""

    def __call__(self, event_name: str):
        if event_name == "before_fit":
            self.run = not in_lr_find(self.learn)
        return super().__call__(event_name)

    @property
    def run_state(self) -> RunState:
        return self.learn.run_state

    @property
    def item_index(self) -> torch.Tensor:
        """The item index (row of its dataset) of each input of the batch in progress."""
        return self.learn.batch_targets.item_index

    @property
    def batch_mix(self) -> BatchMix:
        """What each input of the batch in progress is made of (its own image, or a mix)."""
        return self.learn.batch_targets.mix

    @property
    def stage(self) -> StageData:
        """The inputs of the stage in progress (images or features), set when the stage begins."""
        return self.learn.run_state.stage

    @property
    def device(self) -> torch.device:
        return model_device(self.learn)

    def end_fit(self, reason: str) -> NoReturn:
        """End the fit at once, saying why."""
        self.learn.run_state.stop_reason = reason
        raise CancelFitException()


class RunState(Callback):
    """Where the run stands; see the module docstring. `history` holds the rows of the completed epochs."""

    order = -50  # before every other callback, so they all see this epoch's number

    def __init__(self, history: list[dict] | None = None) -> None:
        self.history: list[dict] = list(history or [])
        self._epoch = len(self.history)  # fastai's own `learn.epoch` restarts at 0 in every fit
        self.values: dict[str, Any] = {}
        self.stage: StageData | None = None  # the stage in progress's inputs, set when the stage begins
        self.stop_reason: str | None = None  # why the last fit ended early (WsmlCallback.end_fit)

    @property
    def epoch(self) -> int:
        """The run's epoch in progress (or the last one), from 1."""
        return self._epoch

    @property
    def completed(self) -> int:
        return len(self.history)

    def before_fit(self) -> None:
        self.stop_reason = None
        self.run = not in_lr_find(self.learn)

    def before_epoch(self) -> None:
        self._epoch += 1
        self.values = {}

    def record(self, **values: Any) -> None:
        """Add columns to this epoch's row of metrics.csv."""
        self.values.update(values)

    def best(self) -> dict | None:
        """The first completed epoch with the highest `epoch_score` (None before any)."""
        scores = [epoch_score(row) for row in self.history]
        if not scores:
            return None
        return self.history[-1] if np.all(np.isnan(scores)) else self.history[int(np.nanargmax(scores))]


@dataclass
class BatchMix:
    """What each input of a batch is made of: the mean of the images at `positions` (B x N positions in the batch,
    column 0 its own; an input that is no mix repeats its own position), whose item indices are `items` (B x N);
    `mixed` (B) says which inputs are mixes. The truth of a mix's entry is the OR of its images' truths."""

    positions: torch.Tensor
    items: torch.Tensor
    mixed: torch.Tensor

    @classmethod
    def unmixed(cls, item_index: torch.Tensor) -> BatchMix:
        """Every input its own image alone."""
        device = item_index.device
        positions = torch.arange(len(item_index), device=device)[:, None]
        return cls(positions, item_index[:, None], torch.zeros(len(item_index), dtype=torch.bool, device=device))


class TargetsCallback(Callback):
    """Make each batch's targets on the device, from its dataset's label store, by item index.

    Loaders carry only the inputs and the item indices; the B x C targets (1, 0, -1) are made here, for the
    batch alone and on the device, so no label matrix is ever dense. The index stays as `item_index` for the
    callbacks that keep state per training entry (`WsmlCallback.item_index`), with the batch's `mix`, unmixed
    until a mixing callback (`MIXING_ORDER`) replaces it. It acts in every fit.
    """

    order = -20

    @property
    def name(self) -> str:
        """The Learner's attribute for it (fastai's default, `targets`, clashes with get_preds' own `targets`)."""
        return "batch_targets"

    def __init__(self) -> None:
        self.on_device: dict[int, DeviceLabels] = {}  # a dataset's labels, moved to the device once
        self.item_index: torch.Tensor | None = None
        self.mix: BatchMix | None = None

    def before_batch(self) -> None:
        index = self.learn.yb[0]
        self.item_index, self.mix = index, BatchMix.unmixed(index)
        self.learn.yb = (self.labels_of(self.learn.dl.dataset, index.device).dense(index),)

    def labels_of(self, dataset, device: torch.device) -> DeviceLabels:
        key = id(dataset.labels)
        if key not in self.on_device or self.on_device[key].device != device:
            self.on_device[key] = dataset.labels.to(device)
        return self.on_device[key]


MIXING_ORDER = TargetsCallback.order + 2  # after the targets (-20) and the per-entry state laid over them (-19)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A torch optimizer's state dict with plain numbers in its groups (fastai's schedulers write numpy
    scalars there, which a safe `torch.load(weights_only=True)` refuses)."""
    state = optimizer.state_dict()
    groups = [{k: v.item() if isinstance(v, np.generic) else v for k, v in g.items()} for g in state["param_groups"]]
    return {**state, "param_groups": groups}
