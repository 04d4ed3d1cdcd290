"""`--accumulate N`: N batches' gradients make one optimizer step, equal to one step on a batch N times larger; an
epoch whose batches are not a multiple of N steps on its last batch, so no gradient outlives it."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback
from helpers import BS, N, observed_labels, tiny_learner

from wsml_fast.core.errors import WsmlError
from wsml_fast.training.accumulation import EpochGradientAccumulation
from wsml_fast.training.callbacks import DeviceMixedPrecision
from wsml_fast.training.config import resolve


class StepProbe(Callback):
    """Where the optimizer stepped (epoch, batch), and whether any gradient was left when each epoch ended."""

    order = 99

    def before_fit(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.left_over: list[bool] = []

    def after_step(self) -> None:
        self.steps.append((self.learn.epoch, self.learn.iter))

    def after_epoch(self) -> None:
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        self.left_over.append(any(bool(g.abs().sum() > 0) for g in grads))


def trained(bs: int, accumulate: int) -> dict[str, torch.Tensor]:
    callbacks = [EpochGradientAccumulation(accumulate)] if accumulate > 1 else []
    learn = tiny_learner(callbacks, observed_labels(), bs=bs, shuffle=False)
    learn.fit(2, lr=0.5)
    return {name: value.detach().clone() for name, value in learn.model.state_dict().items()}


def test_n_accumulated_batches_make_the_step_of_one_batch_n_times_larger() -> None:
    whole, accumulated = trained(2 * BS, 1), trained(BS, 2)
    assert not torch.equal(whole["1.weight"], trained(BS, 1)["1.weight"])  # the batch size matters ...
    for name in whole:  # ... and accumulating two batches of BS is one batch of 2 x BS (AN's mean loss)
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_epoch_steps_on_its_last_batch_and_leaves_no_gradient(precision: str) -> None:
    probe = StepProbe()
    callbacks = [EpochGradientAccumulation(3), probe]
    if precision == "fp16":  # loss scaling: the scaler's step runs at the accumulated steps alone
        callbacks.append(DeviceMixedPrecision(amp_mode="fp16"))
    learn = tiny_learner(callbacks, observed_labels())
    assert N // BS == 4  # batches per epoch, not a multiple of 3
    learn.fit(2, lr=0.1)
    assert probe.steps == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert probe.left_over == [False, False]


def test_accumulate_must_be_at_least_one() -> None:
    with pytest.raises(WsmlError, match="--accumulate must be at least 1"):
        resolve(None, None, {"accumulate": 0})
