"""Partial-label losses: per-entry binary cross-entropy on logits, averaged over all B*C entries.

Targets carry 1 (positive), 0 (observed negative) and -1 (unobserved); fastai's BCE would read -1 as a
target value, so every scheme here decides itself what an unobserved entry means. Losses are computed in
fp32 whatever the autocast dtype, so mixed precision cannot change them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def positive_term(logits: torch.Tensor) -> torch.Tensor:
    """-log(sigmoid(x)), stable for any x."""
    return F.softplus(-logits)


def negative_term(logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(x)), stable for any x."""
    return F.softplus(logits)


class PartialLabelLoss(nn.Module):
    """Base class: subclasses give the loss of each entry; reduction follows fastai's conventions.

    `reduction='none'` (set by fastai's `get_preds(with_loss=True)`) returns one loss per image.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.entry_losses(logits.float(), targets)
        if self.reduction == "none":
            return losses.mean(dim=1)
        return losses.sum() if self.reduction == "sum" else losses.mean()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def decodes(self, probs: torch.Tensor) -> torch.Tensor:
        return probs > 0.5


class AssumeNegativeLoss(PartialLabelLoss):
    """AN: observed positives are positives, everything else (observed negative or unobserved) negative."""

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positive = targets == 1
        return torch.where(positive, positive_term(logits), negative_term(logits))


class FullLabelLoss(PartialLabelLoss):
    """BCE against known labels; any unknown entry (-1) contributes 0 but stays in the denominator."""

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = torch.where(targets == 1, positive_term(logits), negative_term(logits))
        return losses * (targets >= 0)


LOSSES: dict[str, type[PartialLabelLoss]] = {"an": AssumeNegativeLoss, "bce": FullLabelLoss}
FULL_LABEL_SCHEMES = {"bce"}


def make_loss(scheme: str, num_classes: int, expected_positives: float | None = None) -> PartialLabelLoss:
    return LOSSES[scheme]()
