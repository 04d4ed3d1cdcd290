"""ROLE: start values, the loss and its gradients by hand, and the estimates trained in a real Learner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import C, callback_of, observed_labels, tiny_learner

from wsml_fast.data.labelstore import LabelStore
from wsml_fast.schemes.role.training import RoleCallback, initial_estimates, role_loss, role_parts

LN3 = math.log(3)


def test_initial_estimates():
    labels = LabelStore.from_dense(np.array([[1.0, 0.0] + [-1.0] * 998]))
    start = torch.sigmoid(initial_estimates(labels, torch.Generator().manual_seed(0)))[0]
    assert start[0].item() == pytest.approx(0.995) and start[1].item() == pytest.approx(0.005)
    unobserved = start[2:]
    assert unobserved.min() >= 0.4 and unobserved.max() <= 0.6
    assert unobserved.mean().item() == pytest.approx(0.5, abs=0.01)


def test_role_loss_by_hand():
    """Classifier p = (0.75, 0.5), estimates y = (0.5, 0.25), first entry observed positive, k = 1."""
    logits = torch.tensor([[LN3, 0.0]], requires_grad=True)
    estimate_logits = torch.tensor([[0.0, -LN3]], requires_grad=True)
    targets = torch.tensor([[1.0, -1.0]])
    log2, p75, p25 = math.log(2), -math.log(0.75), -math.log(0.25)
    classifier_side = (0.5 * p75 + 0.5 * p25 + p75 + log2) / 2 + ((1.25 - 1) / 2) ** 2
    estimate_side = (log2 + log2 + 0.5 * p25 + 0.5 * p75) / 2 + ((0.75 - 1) / 2) ** 2
    loss = role_loss(logits, estimate_logits, targets, 1.0)
    assert loss.item() == pytest.approx((classifier_side + estimate_side) / 2)

    # each side's gradient comes from its own term only (the other side is detached):
    # d/dx [BCE(x, t) + 1[z=1] * -log sigmoid(x)] = p - t (- 1 if observed positive), over 2 entries,
    # plus the regularizer's 2 * (sum p - k) / C^2 * p (1 - p); all halved
    loss.backward()
    reg = 2 * (1.25 - 1) / 4
    expected = [0.5 * ((0.75 - 0.5 + 0.75 - 1) / 2 + reg * 0.75 * 0.25), 0.5 * ((0.5 - 0.25) / 2 + reg * 0.25)]
    torch.testing.assert_close(logits.grad, torch.tensor([expected]))
    reg = 2 * (0.75 - 1) / 4
    expected = [0.5 * ((0.5 - 0.75 + 0.5 - 1) / 2 + reg * 0.25), 0.5 * ((0.25 - 0.5) / 2 + reg * 0.25 * 0.75)]
    torch.testing.assert_close(estimate_logits.grad, torch.tensor([expected]))


def test_role_needs_expected_positives():
    with pytest.raises(ValueError, match="--expected-positives"):
        role_parts(LabelStore.from_dense(observed_labels()), None)


def test_estimates_train_with_the_model_and_round_trip():
    labels = observed_labels()
    parts = role_parts(LabelStore.from_dense(labels), 1.5, generator=torch.Generator().manual_seed(0))
    role = callback_of(parts, RoleCallback)
    start = role.estimates.clone()
    learn = tiny_learner([], labels, parts=parts)
    learn.fit(1, 0.01)
    assert role.estimate_opt.param_groups[0]["lr"] == pytest.approx(0.1)  # 10 x the learner's lr
    changed = (role.estimates - start).abs() > 1e-6
    assert changed.any(dim=1).all()  # every item was in a batch and its estimates moved
    assert learn.recorder.losses and all(math.isfinite(v) for v in learn.recorder.losses)

    trained = role.estimates.clone()
    learn.lr_find(num_it=10, show_plot=False)  # trains nothing here
    torch.testing.assert_close(role.estimates, trained)

    copy = callback_of(role_parts(LabelStore.from_dense(labels), 1.5), RoleCallback)
    copy.load_state_dict(role.state_dict())
    torch.testing.assert_close(copy.estimates, trained)
    with pytest.raises(ValueError, match="shape"):
        callback_of(role_parts(LabelStore.from_dense(labels[:, : C - 1]), 1.5), RoleCallback).load_state_dict(
            role.state_dict()
        )
