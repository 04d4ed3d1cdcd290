"""Each loss against values worked out by hand: logits ln 3, 0, -ln 3 give probabilities 0.75, 0.5, 0.25."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from wsml_fast.schemes import SCHEMES
from wsml_fast.schemes.cole import training as cole
from wsml_fast.schemes.losses import KnownLabelLoss

COLE = [name for name, scheme in SCHEMES.items() if scheme.family == "cole"]

LN3 = math.log(3)
P75, P50, P25 = -math.log(0.75), math.log(2), -math.log(0.25)  # -log(p) for p = 0.75, 0.5, 0.25
LOGITS = torch.tensor([[LN3, 0.0, -LN3]])  # probabilities 0.75, 0.5, 0.25
TARGETS = torch.tensor([[1.0, 0.0, -1.0]])  # observed positive, observed negative, unobserved


def make_loss(scheme: str, num_classes: int, expected_positives: float | None = None):
    """The loss of a Cole et al. scheme, from the part of a scheme context that its table reads."""
    context = SimpleNamespace(
        table=SimpleNamespace(classes=list(range(num_classes))), expected_positives=expected_positives
    )
    return getattr(cole, SCHEMES[scheme].build)(context).loss


def loss(scheme: str, logits: torch.Tensor = LOGITS, targets: torch.Tensor = TARGETS, **kwargs) -> float:
    return make_loss(scheme, logits.shape[1], **kwargs)(logits, targets).item()


def test_bce_and_iu_use_known_entries_only_but_divide_by_all():
    expected = (P75 + P50 + 0.0) / 3  # -log 0.75 for the positive, -log(1 - 0.5) for the negative
    for scheme in ("bce", "iu", "iun"):
        assert loss(scheme) == pytest.approx(expected)


def test_iun_keeps_the_negative_term_of_true_negatives():
    truth_negatives = torch.tensor([[1.0, 0.0, 0.0]])  # the unobserved entry is a true negative
    assert loss("iun", targets=truth_negatives) == pytest.approx((P75 + P50 + P75) / 3)
    assert make_loss("iun", 3).__class__ is make_loss("iu", 3).__class__ is KnownLabelLoss


def test_an_treats_unobserved_as_negative():
    assert loss("an") == pytest.approx((P75 + P50 + P75) / 3)  # -log(1 - 0.25) = -log 0.75


def test_label_smoothing_follows_the_reference_coefficient():
    positive = 0.9 * P75 + 0.1 * P25  # target 0.9 on p = 0.75
    negative = 0.9 * P50 + 0.1 * P50  # target 0.1 on p = 0.5
    unobserved_as_negative = 0.9 * P75 + 0.1 * P25  # target 0.1 on p = 0.25
    assert loss("bce-ls") == pytest.approx((positive + negative) / 3)
    assert loss("an-ls") == pytest.approx((positive + negative + unobserved_as_negative) / 3)


def test_wan_weighs_only_unobserved_negatives():
    gamma = 1 / (3 - 1)
    assert loss("wan") == pytest.approx((P75 + P50 + gamma * P75) / 3)


def test_epr_positive_term_plus_expected_positive_penalty():
    logits = torch.cat([LOGITS, torch.full((1, 3), -LN3)])  # second image: 0.25 each, all unobserved
    targets = torch.cat([TARGETS, torch.full((1, 3), -1.0)])
    positives_per_image = (1.5 + 0.75) / 2
    expected = P75 / 6 + (positives_per_image - 1.0) ** 2 / 3**2
    assert loss("epr", logits, targets, expected_positives=1.0) == pytest.approx(expected)


def test_per_image_losses_average_to_the_batch_loss():
    logits, targets = torch.randn(4, 5), torch.randint(-1, 2, (4, 5)).float()
    for scheme in COLE:
        func = make_loss(scheme, 5, expected_positives=1.5)
        batch = func(logits, targets)
        func.reduction = "none"
        per_image = func(logits, targets)
        assert per_image.shape == (4,)
        assert per_image.mean().item() == pytest.approx(batch.item(), rel=1e-6)


def test_losses_are_fp32_for_half_logits():
    assert make_loss("an", 3)(LOGITS.half(), TARGETS).dtype == torch.float32
