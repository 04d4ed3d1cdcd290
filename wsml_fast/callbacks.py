"""fastai callbacks of wsml, one concern each."""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.tracker import TrackerCallback

from wsml_fast.metrics import mean_average_precision


class ItemIndexCallback(Callback):
    """Take the item index off the batch so losses and metrics see one target; keep it for other callbacks."""

    order = -20

    def before_batch(self) -> None:
        if len(self.learn.yb) == 2:
            self.learn.item_index = self.learn.yb[1]
            self.learn.yb = self.learn.yb[:1]


class DeviceMixedPrecision(MixedPrecision):
    """fastai's mixed precision with autocast and loss scaling on the model's device type (fastai's are
    CUDA-only), so bf16 trains on a CPU and the fp16 loss-scaling path can be tested without a GPU."""

    def before_fit(self) -> None:
        with warnings.catch_warnings():  # fastai warns that CUDA autocast is off on a CPU; ours replaces it
            warnings.filterwarnings("ignore", message=".*CUDA is not available")
            super().before_fit()
        device_type = next(self.learn.model.parameters()).device.type
        dtype = torch.bfloat16 if self.amp_mode.value == "bf16" else torch.float16
        self.autocast = torch.autocast(device_type, dtype=dtype)
        self.learn.scaler = torch.amp.GradScaler(device_type, **self.kwargs)


class CheckpointedState:
    """Marks a callback whose state (stored labels, label estimates) belongs in the checkpoint with the weights."""

    def state_dict(self) -> dict:
        raise NotImplementedError


class SaveBestCallback(TrackerCallback):
    """Keep the weights of the best epoch so far (by valid mAP) across every fit of the run; reload at the end.

    Unlike fastai's SaveModelCallback it prints nothing (the run log reports the best epoch) and never
    saves during `lr_find`. The state of CheckpointedState callbacks is saved beside the weights.
    """

    order = TrackerCallback.order + 1

    def __init__(self, fname: str, monitor: str = "valid_map", state_file: str = "scheme_state.pt") -> None:
        super().__init__(monitor=monitor, comp=np.greater, reset_on_fit=False)
        self.fname, self.state_file = fname, state_file

    def after_epoch(self) -> None:
        super().after_epoch()
        if self.new_best and not hasattr(self.learn, "lr_finder"):
            self.learn.save(self.fname, with_opt=False)
            states = {type(cb).__name__: cb.state_dict() for cb in self.learn.cbs if isinstance(cb, CheckpointedState)}
            if states:
                torch.save(states, self.learn.path / self.learn.model_dir / self.state_file)

    def after_fit(self) -> None:
        if (
            not hasattr(self.learn, "lr_finder")
            and (self.learn.path / self.learn.model_dir / f"{self.fname}.pth").exists()
        ):
            self.learn.load(self.fname, with_opt=False)


class FrozenBodyCallback(Callback):
    """While the body is frozen (linear training), keep it in eval mode so its batch-norm statistics stay fixed."""

    order = 1  # after fastai's TrainEvalCallback has put the whole model in train mode

    def before_train(self) -> None:
        body = self.learn.model.body
        if not any(p.requires_grad for p in body.parameters()):
            body.eval()


class EarlyStopCallback(Callback):
    """Stop training when valid mAP falls more than `drop` points below the best so far (the reference's rule)."""

    order = 80  # after the run log has written the epoch

    def __init__(self, drop: float = 3.0, monitor: str = "valid_map") -> None:
        self.drop, self.monitor, self.best = drop, monitor, -float("inf")

    def after_epoch(self) -> None:
        if hasattr(self.learn, "lr_finder"):
            return
        value = self.learn.recorder.log[self.learn.recorder.metric_names.index(self.monitor)]
        self.best = max(self.best, value)
        if value < self.best - self.drop:
            self.learn.early_stopped = f"valid mAP {value:.2f} fell over {self.drop:g} points below {self.best:.2f}"
            raise CancelFitException()


class TrainRecoveryCallback(Callback):
    """`train_recovery_map`: mAP of the model's scores on (a sample of) the training images against their full
    truth, after every epoch; how well the unobserved positives are being recovered."""

    order = 65  # before the run log (70) writes the epoch

    def __init__(self, loader, convention: str, precision: str) -> None:
        self.loader, self.convention, self.precision = loader, convention, precision

    def after_epoch(self) -> None:
        if hasattr(self.learn, "lr_finder"):
            return
        from wsml_fast.inference import predict_scores

        device = next(self.learn.model.parameters()).device
        scores = predict_scores(self.learn.model, self.loader, self.precision, device)
        result = mean_average_precision(scores, self.loader.dataset.labels, convention=self.convention)
        self.learn.epoch_extras["train_recovery_map"] = result.map


class RunLogCallback(Callback):
    """One row per epoch into metrics.csv, and one printed line per epoch when there is no progress bar.

    Other callbacks add columns by filling `learn.epoch_extras` during the epoch. Epochs are counted from 1
    across every `fit` of the run, so a two-stage training keeps one numbering, and fastai's progress table on
    a terminal shows the same numbers.
    """

    order = 70  # after the Recorder (50) has its epoch values
    run_valid = False

    def __init__(self, path: Path, say: Callable[..., None], print_lines: bool) -> None:
        self.path, self.say, self.print_lines = Path(path), say, print_lines
        self.rows: list[dict] = []
        self.start = 0.0

    def before_fit(self) -> None:
        self.in_lr_find = hasattr(self.learn, "lr_finder")

    def before_epoch(self) -> None:
        self.start = time.perf_counter()
        self.learn.epoch_extras = {}
        if not self.in_lr_find:  # fastai's progress table numbers from 0 in each fit; show the run's numbering
            self.learn.recorder.log[0] = len(self.rows) + 1

    def before_train(self) -> None:
        self.train_start = time.perf_counter()

    def after_train(self) -> None:
        self.train_seconds = time.perf_counter() - self.train_start

    def after_epoch(self) -> None:
        if self.in_lr_find:
            return
        names = self.learn.recorder.metric_names[1:-1]  # without 'epoch' and 'time'
        values = self.learn.recorder.log[1 : 1 + len(names)]
        row = {"epoch": len(self.rows) + 1, **{n: _number(v) for n, v in zip(names, values, strict=True)}}
        row["seconds"] = round(time.perf_counter() - self.start, 2)
        row["train_seconds"] = round(self.train_seconds, 3)
        row["lr"] = float(self.learn.opt.hypers[-1]["lr"])
        row.update(self.learn.epoch_extras)
        self.rows.append(row)
        self._write()
        line = "  ".join(_fmt(k, v) for k, v in row.items())
        self.say(line, console=self.print_lines)

    def _write(self) -> None:
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def best(self, monitor: str = "valid_map") -> dict:
        """The first epoch with the highest `monitor` (fastai's SaveModelCallback keeps the same one)."""
        scores = [row.get(monitor, float("nan")) for row in self.rows]
        return self.rows[int(np.nanargmax(scores))] if not np.all(np.isnan(scores)) else self.rows[-1]


def _number(value) -> float:
    return float(value) if value is not None else float("nan")


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
