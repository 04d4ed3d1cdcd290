"""Partial-label losses: per-entry binary cross-entropy on logits, averaged over all B*C entries.

Targets carry 1 (positive), 0 (observed negative) and -1 (unobserved); fastai's BCE would read -1 as a
target value, so every scheme here decides itself what an unobserved entry means. Losses are computed in
fp32 whatever the autocast dtype, so mixed precision cannot change them. Every mean runs over all B*C
entries, also for entries a scheme ignores, as both reference implementations (Cole et al. 2021,
Kim et al. 2022) divide by B*C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LABEL_SMOOTHING = 0.1  # Cole et al.'s `ls_coef`


def positive_term(logits: torch.Tensor) -> torch.Tensor:
    """-log(sigmoid(x)), stable for any x."""
    return F.softplus(-logits)


def negative_term(logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(x)), stable for any x."""
    return F.softplus(logits)


def soft_bce(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """BCE against a probability target y: y * -log(p) + (1 - y) * -log(1 - p)."""
    return target_probs * positive_term(logits) + (1 - target_probs) * negative_term(logits)


def smoothed_bce(logits: torch.Tensor, positive: torch.Tensor, smoothing: float) -> torch.Tensor:
    """BCE against 1 - eps where `positive`, else eps.

    Cole et al.'s code weighs the wrong-side term by eps = `ls_coef` (0.1): targets 0.9 / 0.1, not the
    1 - eps/2 / eps/2 of their paper's (1 - eps) y + eps/2; we follow the code.
    """
    return soft_bce(logits, torch.where(positive, 1.0 - smoothing, smoothing))


def expected_positive_penalty(probs: torch.Tensor, expected_positives: float) -> torch.Tensor:
    """((mean over the batch of the predicted positives per image) - k)^2 / C^2: Cole et al.'s R_k."""
    return ((probs.sum(dim=1).mean() - expected_positives) / probs.shape[1]) ** 2


class PartialLabelLoss(nn.Module):
    """Base class: subclasses give the loss of each entry, and optionally a batch-level term.

    `reduction='none'` (set by fastai's `get_preds(with_loss=True)`) returns one loss per image; a batch
    term is added to each image's loss so that their mean stays the batch loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_term(self, logits: torch.Tensor) -> torch.Tensor:
        """A loss on the whole batch (EPR's regularizer) added to the mean entry loss; none by default."""
        return logits.new_zeros(())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        losses = self.entry_losses(logits, targets)
        extra = self.batch_term(logits)
        if self.reduction == "none":
            return losses.mean(dim=1) + extra
        if self.reduction == "sum":
            return losses.sum() + extra * losses.numel()
        return losses.mean() + extra

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def decodes(self, probs: torch.Tensor) -> torch.Tensor:
        return probs > 0.5


class AssumeNegativeLoss(PartialLabelLoss):
    """AN: observed positives are positives, everything else (observed negative or unobserved) negative.

    `smoothing` gives AN-LS; `unobserved_weight` < 1 gives WAN, which weighs the negative term of the
    *unobserved* entries only (observed negatives are true negatives and keep weight 1).
    """

    def __init__(self, smoothing: float = 0.0, unobserved_weight: float = 1.0) -> None:
        super().__init__()
        self.smoothing, self.unobserved_weight = smoothing, unobserved_weight

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = smoothed_bce(logits, targets == 1, self.smoothing)
        if self.unobserved_weight == 1.0:
            return losses
        return torch.where(targets == -1, losses * self.unobserved_weight, losses)


class KnownLabelLoss(PartialLabelLoss):
    """BCE on the known entries only; an unknown entry (-1) contributes 0 but stays in the denominator.

    With full labels this is BCE (`bce`, `bce-ls` with smoothing); with observed labels it is IU; with the
    observed positives plus truth.csv's negatives it is IUN. (Cole et al.'s IUN compares the 0/1 truth
    against -1 and so drops every negative term; here the caller's targets decide.)
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return smoothed_bce(logits, targets == 1, self.smoothing) * (targets >= 0)


class ExpectedPositiveLoss(PartialLabelLoss):
    """EPR: the positive term on observed positives, plus the expected-positive penalty on the batch."""

    def __init__(self, expected_positives: float) -> None:
        super().__init__()
        self.expected_positives = expected_positives

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return positive_term(logits) * (targets == 1)

    def batch_term(self, logits: torch.Tensor) -> torch.Tensor:
        return expected_positive_penalty(torch.sigmoid(logits), self.expected_positives)
