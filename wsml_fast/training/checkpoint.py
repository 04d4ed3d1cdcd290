"""checkpoint.pth: the whole state of a run at the end of its last completed epoch, and putting it back.

A resumed run must continue exactly as the uninterrupted run would have (the same metrics.csv and model.pth
bytes), so the checkpoint holds every piece of state that outlives an epoch: the weights and the optimizer; the
random states (python, numpy, torch, CUDA), the training loader's shuffling stream and the augmentation
pipeline's generators; the schemes' stored labels and estimates and the diagnostics' records (the
CheckpointedState callbacks); the run's history; and, for a resume in the middle of a fit, what fastai keeps
per fit (the loss scaler and the smoothed training loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from wsml_fast.core.randomness import rng_states, set_rng_states
from wsml_fast.learning.contract import CheckpointedState, WsmlCallback, checkpointed_states, optimizer_state


def _fit_state(learn) -> dict[str, Any]:
    scaler = getattr(learn, "scaler", None)
    smooth = learn.recorder.smooth_loss
    return {
        "scaler": None if scaler is None else scaler.state_dict(),
        "smooth_loss": {"count": smooth.count, "val": smooth.val.detach().cpu()},
    }


def capture(learn, model: torch.nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything a resumed run needs, at the end of the epoch that just completed."""
    run_state, train_loader = learn.run_state, learn.dls.train
    best = run_state.best()
    return {
        "meta": {**meta, "epoch": run_state.completed, "history": run_state.history, "best_epoch": best["epoch"]},
        "model": model.state_dict(),
        "optimizer": optimizer_state(learn.opt.opt),
        "fit": _fit_state(learn),
        "rng": rng_states(),
        "loader_rng": train_loader.rng.getstate(),
        "augmentation": train_loader.dataset.random_state(),
        "callbacks": checkpointed_states(learn),
    }


def restore(learn, model: torch.nn.Module, checkpoint: dict[str, Any], mid_stage: bool) -> None:
    """Put a checkpoint's state back before the resumed run's first fit (its history is RunState's). In the
    middle of a stage, the stage's optimizer, loader stream and augmentation state and fastai's per-fit state go
    back too; at the start of a stage these are new, as in the uninterrupted run."""
    model.load_state_dict(checkpoint["model"])
    saved = checkpoint["callbacks"]
    for callback in learn.cbs:
        if isinstance(callback, CheckpointedState):
            callback.load_state_dict(saved[type(callback).__name__])
    if mid_stage:
        learn.opt.load_state_dict(checkpoint["optimizer"])
        learn.dls.train.rng.setstate(checkpoint["loader_rng"])
        learn.dls.train.dataset.set_random_state(checkpoint["augmentation"])
        learn.checkpoint.fit_state = checkpoint["fit"]
    set_rng_states(checkpoint["rng"])


class CheckpointCallback(WsmlCallback):
    """Write checkpoint.pth (through `save`) when an epoch completes; in a run resumed in the middle of a stage,
    put the loss scaler and smoothed loss back when its fit begins (fastai makes both anew in each fit)."""

    order = 72  # after the run log (70) and the best weights (71); before early stopping (80) can end the fit

    def __init__(self, save: Callable[[dict], None], model: torch.nn.Module, meta: dict[str, Any]) -> None:
        self.save, self.model, self.meta = save, model, meta
        self.fit_state: dict[str, Any] | None = None  # set by `restore` in the middle of a stage

    def before_fit(self) -> None:
        if self.fit_state is None:
            return
        if self.fit_state["scaler"] is not None and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(self.fit_state["scaler"])
        smooth = self.learn.recorder.smooth_loss
        smooth.count, smooth.val = self.fit_state["smooth_loss"]["count"], self.fit_state["smooth_loss"]["val"]
        self.fit_state = None

    def after_epoch(self) -> None:
        self.save(capture(self.learn, self.model, self.meta))
