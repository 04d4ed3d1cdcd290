"""EM and APL: hand-computed entry losses, the entropy's gradient, the quota and the per-class selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsml_fast.schemes.em.training import (
    apl_due,
    apl_quota,
    apl_update,
    binary_entropy,
    em_apl_losses,
    em_losses,
    select_lowest,
)

LN3 = math.log(3.0)  # the logit of p = 0.75
H_075 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of p = 0.75, in nats


def test_em_entry_losses_by_hand() -> None:
    """Unobserved p = 0.5 and 0.75 cost -alpha H(p); observed positive -log p; observed negative -log(1 - p)."""
    logits = torch.tensor([[0.0, LN3, LN3, LN3]])
    targets = torch.tensor([[-1.0, 1.0, 0.0, -1.0]])
    expected = [-0.2 * math.log(2.0), -math.log(0.75), -math.log(0.25), -0.2 * H_075]
    assert em_losses(logits, targets, alpha=0.2)[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_pseudo_labels_replace_the_entropy_term_on_unobserved_entries_only() -> None:
    """s = 0.2 at p = 0.75: beta * (0.2 * -log 0.75 + 0.8 * -log 0.25); on an observed positive the label wins."""
    logits = torch.tensor([[LN3, LN3, LN3, 0.0]])
    targets = torch.tensor([[-1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False, True]])
    values = torch.tensor([[0.2, 0.3, 0.0, 0.4]])
    expected = [
        0.9 * (0.2 * -math.log(0.75) + 0.8 * -math.log(0.25)),
        -math.log(0.75),
        -0.1 * H_075,
        -math.log(0.5),
    ]
    losses = em_apl_losses(logits, targets, alpha=0.1, beta=0.9, pseudo_mask=mask, pseudo_values=values)
    assert losses[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_entropy_gradient_is_minus_x_p_one_minus_p() -> None:
    """dH/dx = (dH/dp)(dp/dx) = log((1 - p) / p) * p (1 - p) = -x p (1 - p): 0 at p = 0.5, pushes p toward 0.5."""
    logits = torch.tensor([0.0, LN3, -2.0], requires_grad=True)
    binary_entropy(logits).sum().backward()
    expected = [-x * (1 / (1 + math.exp(-x))) * (1 / (1 + math.exp(x))) for x in (0.0, LN3, -2.0)]
    assert logits.grad.tolist() == pytest.approx(expected, abs=1e-7)


def test_agrees_with_the_reference_eps_convention_up_to_its_eps() -> None:
    """The reference's -log(x + 1e-5) is -log x - log(1 + 1e-5 / x): within 1e-5 / x of ours on every term."""
    eps = 1e-5
    logits = np.linspace(-8, 8, 33)
    p = 1 / (1 + np.exp(-logits))
    alpha, beta, s = 0.1, 0.9, 0.3

    def neg_log(x: np.ndarray) -> np.ndarray:
        return -np.log(x + eps)

    cases = {  # target: (reference formula, allowed difference)
        1.0: (neg_log(p), eps / p),
        -1.0: (-alpha * (p * neg_log(p) + (1 - p) * neg_log(1 - p)), alpha * 2 * eps),
        0.5: (beta * (s * neg_log(p) + (1 - s) * neg_log(1 - p)), beta * (s * eps / p + (1 - s) * eps / (1 - p))),
    }
    x = torch.tensor(logits, dtype=torch.float32)
    for target, (reference, allowed) in cases.items():
        targets = torch.full_like(x, 1.0 if target == 1.0 else -1.0)
        mask = torch.full_like(x, target == 0.5, dtype=torch.bool)
        ours = em_apl_losses(x, targets, alpha, beta, mask, torch.full_like(x, s)).double().numpy()
        assert np.all(np.abs(ours - reference) <= allowed + 1e-6 * np.abs(reference) + 1e-7)


def test_quota_truncates_and_counts_the_initial_unobserved() -> None:
    """T = 10, warm-up 3: 0.9 * 45 / 7 = 5.79 -> 5 (not 6), 0.9 * 10 / 7 = 1.29 -> 1, 0.9 * 7 / 7 = 0.9 -> 0."""
    quota = apl_quota(torch.tensor([45, 10, 7, 0]), epochs=10, warmup=3)
    assert quota.tolist() == [5, 1, 0, 0]


def test_quota_equals_the_reference_float_formula() -> None:
    counts = np.arange(200_001)
    for warmup in range(10):
        reference = np.floor(0.9 * counts.astype(np.float64) / (10 - warmup)).astype(np.int64)
        assert np.array_equal(apl_quota(torch.tensor(counts), epochs=10, warmup=warmup).numpy(), reference)


def test_quota_needs_epochs_after_the_warmup() -> None:
    with pytest.raises(ValueError, match="more epochs"):
        apl_quota(torch.tensor([4]), epochs=5, warmup=5)


def test_apl_runs_from_the_warmup_epoch_on() -> None:
    assert [apl_due(t, warmup=5) for t in range(1, 11)] == [False] * 4 + [True] * 6


# Columns: 0 takes the two lowest eligible (row 1's 0.1 is not eligible); 1 takes one, passing over the lowest
# score (row 2, ineligible); 2 has two eligible entries for a quota of 3 and takes both; 3 breaks a three-way tie
# at 0.2 by row order.
SCORES = torch.tensor(
    [
        [0.5, 0.4, 0.8, 0.7],
        [0.1, 0.4, 0.1, 0.2],
        [0.3, 0.05, 0.2, 0.2],
        [0.2, 0.6, 0.3, 0.9],
        [0.9, 0.3, 0.6, 0.2],
    ]
)
ELIGIBLE = torch.tensor(
    [
        [True, True, True, True],
        [False, True, False, True],
        [True, False, False, True],
        [True, True, False, True],
        [True, True, True, True],
    ]
)


def test_selection_per_class_by_hand() -> None:
    chosen = select_lowest(SCORES, ELIGIBLE, torch.tensor([2, 1, 3, 2]))
    rows = {j: chosen[:, j].nonzero().flatten().tolist() for j in range(4)}
    assert rows == {0: [2, 3], 1: [4], 2: [0, 4], 3: [1, 2]}
    assert chosen.sum(0).tolist() == [2, 1, 2, 2]


def test_apl_update_labels_the_next_lowest_and_keeps_earlier_values() -> None:
    """Class 0 of four images: two unobserved rounds of quota 1 take p = 0.1, then p = 0.3 (never the positive)."""
    targets = torch.tensor([[-1.0], [1.0], [-1.0], [-1.0]])
    quota = torch.tensor([1])
    mask, values = torch.zeros(4, 1, dtype=torch.bool), torch.zeros(4, 1)
    mask, values = apl_update(torch.tensor([[0.1], [0.05], [0.3], [0.6]]), targets, mask, values, quota)
    assert mask.flatten().tolist() == [True, False, False, False]
    assert values.flatten().tolist() == pytest.approx([0.1, 0.0, 0.0, 0.0])
    mask, values = apl_update(torch.tensor([[0.01], [0.05], [0.35], [0.6]]), targets, mask, values, quota)
    assert mask.flatten().tolist() == [True, False, True, False]
    assert values.flatten().tolist() == pytest.approx([0.1, 0.0, 0.35, 0.0])
