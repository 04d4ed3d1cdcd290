"""The wsml Learner's contract: what WsmlCallback offers, how it sits out lr_find and ends a fit with a reason,
and the scheme's training loss held only while training."""

from __future__ import annotations

import torch
from helpers import BS, N, observed_labels, tiny_learner

from wsml_fast.learning.contract import WsmlCallback
from wsml_fast.schemes.build import SchemeParts
from wsml_fast.schemes.losses import AssumeNegativeLoss


class Probe(WsmlCallback):
    """Keeps what the base class offers in each training batch, and ends the fit in epoch `stop_in`."""

    def __init__(self, stop_in: int | None = None) -> None:
        self.stop_in, self.indices, self.devices, self.fits = stop_in, [], set(), 0

    def before_fit(self) -> None:
        self.fits += 1

    def after_loss(self) -> None:
        if self.training:
            self.indices.append(self.item_index.clone())
            self.devices.add(self.device)

    def after_epoch(self) -> None:
        if self.run_state.epoch == self.stop_in:
            self.end_fit(f"stopped in epoch {self.stop_in}")


def test_callbacks_see_the_item_indices_and_device_and_end_a_fit_with_a_reason() -> None:
    probe = Probe(stop_in=2)
    learn = tiny_learner([probe], observed_labels())
    learn.fit(5, 0.1)
    assert learn.run_state.epoch == 2 and learn.run_state.stop_reason == "stopped in epoch 2"
    per_epoch = N // BS
    assert len(probe.indices) == 2 * per_epoch and probe.devices == {torch.device("cpu")}
    assert sorted(torch.cat(probe.indices[:per_epoch]).tolist()) == list(range(N))  # each item once an epoch
    learn.fit(1, 0.1)
    assert learn.run_state.stop_reason is None  # a new fit starts without a reason


def test_wsml_callbacks_sit_out_lr_find() -> None:
    probe = Probe()
    learn = tiny_learner([probe], observed_labels())
    learn.lr_find(num_it=5, show_plot=False)
    assert probe.fits == 0 and not probe.indices and learn.run_state.epoch == 0
    learn.fit(1, 0.1)
    assert probe.fits == 1 and learn.run_state.epoch == 1


def test_predictions_after_training_use_the_evaluation_loss() -> None:
    training, evaluation = AssumeNegativeLoss(smoothing=0.1), AssumeNegativeLoss()
    learn = tiny_learner([], observed_labels(), parts=SchemeParts(training, evaluation_loss=evaluation))
    learn.fit(1, 0.1)
    assert learn.loss_func is evaluation
    _, targets, losses = learn.get_preds(with_loss=True)
    probs, _ = learn.get_preds()
    logits = torch.logit(probs.double()).float()
    torch.testing.assert_close(losses, evaluation.entry_losses(logits, targets).mean(dim=1), rtol=1e-4, atol=1e-5)


class Fails(WsmlCallback):
    """Raises in the first training batch's loss, as a non-finite loss or an out-of-memory error would."""

    def after_loss(self) -> None:
        if self.training:
            raise RuntimeError("out of memory")


def test_a_fit_that_fails_leaves_the_evaluation_loss_in_place() -> None:
    training, evaluation = AssumeNegativeLoss(smoothing=0.1), AssumeNegativeLoss()
    learn = tiny_learner([Fails()], observed_labels(), parts=SchemeParts(training, evaluation_loss=evaluation))
    try:
        learn.fit(1, 0.1)
    except RuntimeError as exc:
        assert "out of memory" in str(exc)
    else:
        raise AssertionError("the fit did not fail")
    assert learn.loss_func is evaluation
