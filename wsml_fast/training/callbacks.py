"""fastai callbacks of a wsml training run, one concern each, on the Learner contract (`wsml_fast.learning.contract`:
the run state, the batch's targets, the `WsmlCallback` base).

Order of the end-of-epoch work: the schemes and diagnostics record their values (< 70), the run log writes the
epoch's row (70), the best weights are saved (71), then the checkpoint (72), and only then may early stopping
end the fit (80): an epoch is complete once its checkpoint is written.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import MixedPrecision

from wsml_fast.core.distributed import all_reduce_sum, bare, in_group
from wsml_fast.core.errors import WsmlError
from wsml_fast.learning.contract import (
    CheckpointedState,
    SchemeState,
    WsmlCallback,
    checkpointed_states,
    epoch_score,
    kept_weights,
    model_device,
)


class TrainingLossCallback(WsmlCallback):
    """Give the Learner a scheme's training loss while it trains and its evaluation loss otherwise (validation,
    `get_preds`), the way fastai's MixUp swaps `loss_func`; the Learner is built with the evaluation loss.
    `lr_find`'s fits train on the evaluation loss: the scheme's own training belongs to the run. A fit that ends
    on an error raises no `after_fit`: `ResumableLearner.fit` puts the evaluation loss back then (`restore`)."""

    def __init__(self, training: torch.nn.Module, evaluation: torch.nn.Module) -> None:
        self.training_loss, self.evaluation_loss = training, evaluation

    def before_train(self) -> None:
        self.learn.loss_func = self.training_loss

    def before_validate(self) -> None:
        self.restore()

    def after_fit(self) -> None:
        self.restore()

    def restore(self) -> None:
        self.learn.loss_func = self.evaluation_loss


class DeviceMixedPrecision(MixedPrecision):
    """fastai's mixed precision with autocast and loss scaling on the model's device type (fastai's are
    CUDA-only), so bf16 trains on a CPU and the fp16 loss-scaling path can be tested without a GPU."""

    def before_fit(self) -> None:
        with warnings.catch_warnings():  # fastai warns that CUDA autocast is off on a CPU; ours replaces it
            warnings.filterwarnings("ignore", message=".*CUDA is not available")
            super().before_fit()
        device_type = model_device(self.learn).type
        dtype = torch.bfloat16 if self.amp_mode.value == "bf16" else torch.float16
        self.autocast = torch.autocast(device_type, dtype=dtype)
        self.learn.scaler = torch.amp.GradScaler(device_type, **self.kwargs)


class RunLogCallback(WsmlCallback):
    """One row per completed epoch into metrics.csv (through the run folder), and one printed line per epoch
    when there is no progress bar. fastai's progress table on a terminal shows the run's epoch numbers too."""

    order = 70  # after the Recorder (50) has its epoch values and the diagnostics (< 70) have recorded theirs
    run_valid = False

    def __init__(self, write_rows: Callable[[list[dict]], None], say: Callable[..., None], print_lines: bool) -> None:
        self.write_rows, self.say, self.print_lines = write_rows, say, print_lines
        self.start = self.train_seconds = 0.0

    def before_epoch(self) -> None:
        self.start = time.perf_counter()
        self.learn.recorder.log[0] = self.run_state.epoch  # fastai's progress table numbers from 0 in each fit

    def before_train(self) -> None:
        self.train_start = time.perf_counter()

    def after_train(self) -> None:
        self.train_seconds = time.perf_counter() - self.train_start

    def after_epoch(self) -> None:
        names = self.learn.recorder.metric_names[1:-1]  # without 'epoch' and 'time'
        values = self.learn.recorder.log[1 : 1 + len(names)]
        row = {"epoch": self.run_state.epoch, **{n: _number(v) for n, v in zip(names, values, strict=True)}}
        row["seconds"] = round(time.perf_counter() - self.start, 2)
        row["train_seconds"] = round(self.train_seconds, 3)
        row["lr"] = float(self.learn.opt.hypers[-1]["lr"])
        row.update(self.run_state.values)
        self.run_state.history.append(row)
        self.write_rows(self.run_state.history)
        self.say("  ".join(_fmt(k, v) for k, v in row.items()), console=self.print_lines)


class SaveBestCallback(WsmlCallback):
    """Save the weights of the best epoch so far (by `epoch_score`; `save_weights(state_dict, its metrics row)`):
    the raw ones, or their average (`averaged()`, the model's state dict with the averaged part: --ema) where that
    scored higher; and the schemes' state beside them. The best is read from the run's history, so a resumed run
    continues the same comparison."""

    order = 71

    def __init__(
        self,
        model: torch.nn.Module,
        save_weights: Callable,
        save_states: Callable,
        averaged: Callable[[], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.model, self.save_weights, self.save_states, self.averaged = model, save_weights, save_states, averaged

    def after_epoch(self) -> None:
        row = self.run_state.history[-1]
        if self.run_state.best() is not row:
            return
        self.save_weights(self.averaged() if kept_weights(row) == "ema" else self.model.state_dict(), row)
        states = checkpointed_states(self.learn, SchemeState)
        if states:
            self.save_states(states)


class EarlyStopCallback(WsmlCallback):
    """Stop training when an epoch's score (`epoch_score`: its valid mAP) falls more than `drop` points below the best
    so far (the reference's rule)."""

    order = 80  # after the epoch's checkpoint is written

    def __init__(self, drop: float = 3.0) -> None:
        self.drop = drop

    def after_epoch(self) -> None:
        best, value = epoch_score(self.run_state.best()), epoch_score(self.run_state.history[-1])
        if value < best - self.drop:
            self.end_fit(f"early stop: valid mAP {value:.2f} fell over {self.drop:g} points below {best:.2f}")


class TrainRecoveryCallback(WsmlCallback):
    """`train_recovery_map`: mAP of the model's scores on (a sample of) the training inputs of the stage in progress
    against their full truth, after every epoch; how well the unobserved positives are being recovered."""

    order = 65  # before the run log (70) writes the epoch

    def __init__(self, score: Callable[[torch.nn.Module, Any], float]) -> None:
        self.score = score

    def after_epoch(self) -> None:
        self.run_state.record(train_recovery_map=self.score(bare(self.learn.model), self.stage.recovery))


class LossGuardCallback(WsmlCallback, CheckpointedState):
    """Stop at once on a non-finite training loss, naming the epoch and batch; warn when an epoch's training
    loss explodes yet stays finite (`explosion` times the run's first batch loss, the untrained model's). It reads
    `learn.loss`, which fastai sets from the Learner's loss function (the scheme's training loss while it trains),
    so its place in the order does not matter."""

    def __init__(self, lr: float, say: Callable[..., None], explosion: float = 100.0) -> None:
        self.lr, self.say, self.explosion = lr, say, explosion
        self.first_loss: float | None = None

    def state_dict(self) -> dict:
        return {"first_loss": self.first_loss}

    def load_state_dict(self, state: dict) -> None:
        self.first_loss = state["first_loss"]

    def after_loss(self) -> None:
        if not self.learn.training:
            return
        if not everyone_agrees(bool(torch.isfinite(self.learn.loss).all())):  # any process's loss: all stop
            value = float(self.learn.loss.detach().float().mean())
            raise NonFiniteLoss(
                f"the training loss became {value} in epoch {self.run_state.epoch}, batch {self.learn.iter + 1}; "
                f"the run stopped (its completed epochs are kept): start a new run with a lower --lr than {self.lr:g}"
            )
        if self.first_loss is None:
            self.first_loss = float(self.learn.loss.detach().float().mean())

    def after_epoch(self) -> None:
        if not self.first_loss:
            return
        now = _number(self.learn.recorder.smooth_loss.value)  # what the epoch's train_loss column shows
        if now > self.explosion * self.first_loss:
            self.say(
                f"warning: epoch {self.run_state.epoch}'s training loss {now:.4g} is over {self.explosion:g} times "
                f"the first batch's ({self.first_loss:.4g}); training is diverging: a lower --lr helps"
            )


class NonFiniteLoss(WsmlError):
    """The training loss became NaN or infinite."""


class StopOnRequestCallback(Callback):
    """End the fit at the next batch boundary once `requested()` says a stop was asked for (Ctrl-C, SIGTERM)."""

    order = 90

    def __init__(self, requested: Callable[[], bool]) -> None:
        self.requested = requested

    def after_batch(self) -> None:
        if not everyone_agrees(not self.requested()):  # every process stops at the same batch boundary
            raise CancelFitException()


def everyone_agrees(this_process: bool) -> bool:
    """True when the condition holds in every process of a data-parallel run (the condition itself with one):
    processes that decided apart would wait forever for each other in the next collective."""
    if not in_group():
        return this_process
    return int(all_reduce_sum(torch.tensor([int(not this_process)]))) == 0


def _number(value) -> float:
    """A logged value as a float; data-parallel training logs the smoothed loss once per process: their mean."""
    return float("nan") if value is None else float(torch.as_tensor(value, dtype=torch.float64).mean())


def _fmt(name: str, value) -> str:
    if name == "seconds":
        return f"{value:.1f}s"
    if name == "train_seconds":
        return f"(train {value:.1f}s)"
    if name == "lr":
        return f"lr {value:.2e}"
    if "map" in name or "precision" in name:
        return f"{name} {value:.2f}"
    return f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
