"""GR loss: the epoch schedule of the reference loop, hand-computed entry losses, detached k and v, and stability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsml_fast.schemes.gr.training import GrConfig, GrParams, gr_losses, gr_params

LN3 = math.log(3.0)  # the logit of p = 0.75


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# T = 8, n = 0, defaults [w0, wT, b0, bT] = [0, 2, -2, -2], [mu0, sigma0, muT, sigmaT] = [0.5, 2, 0.8, 0.5]:
# w = 2 (t - 1) / 8, b = -2, mu = 0.5 + 0.3 t / 8, sigma = 2 - 1.5 t / 8, worked out by hand.
SCHEDULE_T8 = {
    1: (0.0, -2.0, 0.5375, 1.8125),
    2: (0.25, -2.0, 0.575, 1.625),
    3: (0.5, -2.0, 0.6125, 1.4375),
    4: (0.75, -2.0, 0.65, 1.25),
    5: (1.0, -2.0, 0.6875, 1.0625),
    6: (1.25, -2.0, 0.725, 0.875),
    7: (1.5, -2.0, 0.7625, 0.6875),
    8: (1.75, -2.0, 0.8, 0.5),
}


@pytest.mark.parametrize("epoch", range(1, 9))
def test_schedule_of_eight_epochs_matches_the_reference_loop(epoch: int) -> None:
    params = gr_params(GrConfig(), epoch, 8)
    assert (params.w, params.b, params.mu, params.sigma) == pytest.approx(SCHEDULE_T8[epoch], abs=1e-12)
    assert (params.q2, params.q3) == (0.01, 1.0)


def test_linear_epochs_delay_both_schedules() -> None:
    """n = 2 of T = 8: at t = 5, w moves by (5 - 3) / 6, mu and sigma by (5 - 2) / 6."""
    config = GrConfig(linear_epochs=2)
    assert gr_params(config, 2, 8)[:4] == pytest.approx((0.0, -2.0, 0.5, 2.0))
    assert gr_params(config, 5, 8)[:4] == pytest.approx((2 * 2 / 6, -2.0, 0.5 + 0.3 * 3 / 6, 2 - 1.5 * 3 / 6))


@pytest.mark.parametrize(("epoch", "epochs", "n"), [(0, 8, 0), (9, 8, 0), (1, 2, 2)])
def test_epochs_outside_the_schedule_are_refused(epoch: int, epochs: int, n: int) -> None:
    with pytest.raises(ValueError, match="outside the schedule"):
        gr_params(GrConfig(linear_epochs=n), epoch, epochs)


def test_entry_losses_by_hand() -> None:
    """Unobserved p = 0.5 and 0.75, observed positive and negative p = 0.75; w 0, b -2, mu 0.5, sigma 2."""
    params = GrParams(w=0.0, b=-2.0, mu=0.5, sigma=2.0, q2=0.01, q3=1.0)
    logits = torch.tensor([[0.0, LN3, LN3, LN3]])
    targets = torch.tensor([[-1.0, 1.0, 0.0, -1.0]])
    # unobserved, p = 0.5: k = sigmoid(-2), v = exp(0) = 1
    k = _sigmoid(-2.0)
    toward_one = (1 - 0.5**0.01) / 0.01
    toward_zero = (1 - 0.5**1.0) / 1.0
    first = k * toward_one + (1 - k) * toward_zero
    # unobserved, p = 0.75: k = sigmoid(0 * 0.75 - 2), v = exp(-(0.25)^2 / (2 * 4))
    v = math.exp(-((0.75 - 0.5) ** 2) / (2 * 2.0**2))
    last = v * (k * (1 - 0.75**0.01) / 0.01 + (1 - k) * (1 - 0.25))
    expected = [first, -math.log(0.75), -math.log(0.25), last]
    assert gr_losses(logits, targets, params)[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_last_epoch_parameters_by_hand() -> None:
    """Epoch 8 of 8: w 1.75, b -2, mu 0.8, sigma 0.5; an unobserved p = 0.75."""
    k = _sigmoid(1.75 * 0.75 - 2.0)
    v = math.exp(-((0.75 - 0.8) ** 2) / (2 * 0.5**2))
    expected = v * (k * (1 - 0.75**0.01) / 0.01 + (1 - k) * (1 - 0.25**1.0))
    loss = gr_losses(torch.tensor([[LN3]]), torch.tensor([[-1.0]]), gr_params(GrConfig(), 8, 8))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _reference_losses(logits: np.ndarray, targets: np.ndarray, params: GrParams) -> np.ndarray:
    """The reference's formulas written out in float64: -log(p + 1e-7) and torch.pow-style powers of p."""
    p = 1 / (1 + np.exp(-logits))
    k = 1 / (1 + np.exp(-(params.w * p + params.b)))
    v = np.exp(-0.5 * ((p - params.mu) / params.sigma) ** 2)
    unobserved = v * (k * (1 - p**params.q2) / params.q2 + (1 - k) * (1 - (1 - p) ** params.q3) / params.q3)
    return np.where(targets == 1, -np.log(p + 1e-7), unobserved)


def test_agrees_with_the_reference_eps_convention_up_to_its_eps() -> None:
    """-log(p + 1e-7) and softplus(-x) differ by log(1 + 1e-7 / p) <= 1e-7 / p; the unobserved terms agree."""
    logits = np.linspace(-8, 8, 33)
    p = 1 / (1 + np.exp(-logits))
    params = gr_params(GrConfig(), 4, 8)
    for target, allowed in ((1.0, 1e-7 / p + 1e-6), (-1.0, 1e-6)):
        targets = np.full_like(logits, target)
        ours = gr_losses(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets), params).double().numpy()
        reference = _reference_losses(logits, targets, params)
        assert np.all(np.abs(ours - reference) <= allowed + 1e-6 * np.abs(reference))


def test_k_and_v_carry_no_gradient() -> None:
    """With k, v constants: d/dx (1 - p^q2)/q2 = -p^q2 (1 - p) and d/dx (1 - (1-p)^q3)/q3 = p (1 - p)^q3."""
    params = GrParams(w=1.0, b=-1.0, mu=0.6, sigma=0.5, q2=0.01, q3=1.0)
    logits = torch.tensor([[LN3]], requires_grad=True)
    gr_losses(logits, torch.tensor([[-1.0]]), params).sum().backward()
    p = 0.75
    k = _sigmoid(1.0 * p - 1.0)
    v = math.exp(-((p - 0.6) ** 2) / (2 * 0.5**2))
    expected = v * (k * -(p**0.01) * (1 - p) + (1 - k) * p * (1 - p))
    assert logits.grad.item() == pytest.approx(expected, rel=1e-5)


def test_extreme_logits_stay_finite_and_exact() -> None:
    """At x = -200 fp32 sigmoid is 0; (1 - p^q2)/q2 = (1 - e^(-200 q2))/q2 still holds, with a finite gradient."""
    params = GrParams(w=0.0, b=-2.0, mu=0.5, sigma=2.0, q2=0.01, q3=1.0)
    logits = torch.tensor([[-200.0, 200.0, -200.0]], requires_grad=True)
    losses = gr_losses(logits, torch.tensor([[-1.0, -1.0, 1.0]]), params)
    losses.sum().backward()
    k, v = _sigmoid(-2.0), math.exp(-(0.5**2) / 8)
    assert losses[0, 0].item() == pytest.approx(v * k * (1 - math.exp(-2.0)) / 0.01, rel=1e-5)
    assert losses[0, 1].item() == pytest.approx(v * (1 - k), rel=1e-5)  # 1 - p^q2 = 0, 1 - (1 - p)^1 = 1
    assert losses[0, 2].item() == pytest.approx(200.0)
    assert torch.isfinite(logits.grad).all()


def test_a_linear_init_run_holds_the_schedules_through_its_linear_phase() -> None:
    from wsml_fast.schemes.gr.training import gr_config
    from wsml_fast.training.config import resolve

    linear_init = resolve(None, None, {"scheme": "gr", "mode": "linear-init", "linear_epochs": 3, "epochs": 5})
    end_to_end = resolve(None, None, {"scheme": "gr", "mode": "end-to-end", "linear_epochs": 3, "epochs": 5})
    assert gr_config(linear_init).linear_epochs == 3 and gr_config(end_to_end).linear_epochs == 0
    held = gr_params(gr_config(linear_init), 3, linear_init.total_epochs)  # the last linear epoch: not yet moved
    assert (held.mu, held.sigma) == (0.5, 2.0)
