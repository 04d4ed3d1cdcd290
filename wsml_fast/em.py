"""EM and APL (Zhou et al., ECCV 2022, Correr-Zhou/SPML-AckTheUnknown): acknowledge the unknown.

EM: an unobserved entry is not assumed negative; its loss is -alpha * H(p), which maximises the entropy of its
prediction, H(p) = -p log p - (1 - p) log(1 - p) (losses.py:55-72). APL: after each epoch t >= warmup, per class
the unlabelled entries with the lowest p get the soft negative label s = p and are from then on trained by
beta * BCE(p, s) (losses.py:75-96, main.py:115-116,244-296). Observed positives cost -log p; observed negatives
(which the reference's single-positive data never has) -log(1 - p). Means over all B*C entries (losses.py:121,135).

Differences from the reference:
- Stable forms on logits (softplus), as everywhere in wsml, instead of -log(x + 1e-5) (losses.py:153-157): the
  same values to within 1e-5 / p, without its cap of -log(1e-5) = 11.5 on a loss.
- Pseudo-labels are a mask plus values beside the 1 / 0 / -1 targets, not -s written into the label matrix
  (main.py:296); so an entry whose s is exactly 0 stays pseudo-labelled, and an observed label always wins.
- Among equal scores, selection takes the lowest row first; the reference's order is that of a shuffled pass
  and an unstable argsort (main.py:273-274,291).
- The quota is computed in exact arithmetic on the decimal proportion; for 0.9 it equals the reference's float
  int(0.9 * U / (T - warmup)) (main.py:290) for every U <= 200,000 and T - warmup <= 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from wsml_fast.losses import negative_term, positive_term, soft_bce

APL_PROPORTION = 0.9  # the reference's `neg_proportion` (main.py:327,334,341,348)
EM_APL_EPOCHS = 10  # main.py:372


@dataclass(frozen=True)
class EmSettings:
    """One dataset's settings in the reference (main.py:322-350); Adam on every parameter at `lr`, no head
    multiplier (main.py:211-216); training stops at the first epoch whose valid mAP does not improve
    (main.py:127-134)."""

    batch_size: int
    lr: float
    alpha: float  # weight of the entropy term on unobserved entries
    warmup: int  # APL runs after every epoch t >= warmup (t from 1)
    beta: float  # weight of the loss on pseudo-labelled entries


EM_APL_SETTINGS: dict[str, EmSettings] = {
    "voc": EmSettings(batch_size=8, lr=1e-5, alpha=0.2, warmup=5, beta=0.02),
    "coco": EmSettings(batch_size=16, lr=1e-5, alpha=0.1, warmup=5, beta=0.9),
    "nuswide": EmSettings(batch_size=16, lr=1e-5, alpha=0.1, warmup=4, beta=0.2),
    "cub": EmSettings(batch_size=8, lr=1e-4, alpha=0.01, warmup=3, beta=0.4),
}


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = p * -log p + (1 - p) * -log(1 - p) of p = sigmoid(x); the gradient flows through both p's."""
    return soft_bce(logits, torch.sigmoid(logits))


def em_losses(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-entry EM losses of fp32 logits against 1 / 0 / -1 (unobserved) targets; the caller takes the mean."""
    observed = torch.where(targets == 1, positive_term(logits), negative_term(logits))
    return torch.where(targets == -1, -alpha * binary_entropy(logits), observed)


def em_apl_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    beta: float,
    pseudo_mask: torch.Tensor,
    pseudo_values: torch.Tensor,
) -> torch.Tensor:
    """EM losses where an unobserved entry with a pseudo-label s (`pseudo_mask`, s in `pseudo_values`) costs
    beta * BCE(p, s) instead of the entropy term. Values outside the mask are ignored but must be finite."""
    pseudo = pseudo_mask & (targets == -1)
    return torch.where(pseudo, beta * soft_bce(logits, pseudo_values), em_losses(logits, targets, alpha))


def apl_due(epoch: int, warmup: int) -> bool:
    """Whether APL runs after training epoch `epoch` (from 1): the reference's `P['epoch'] >= warmup_epoch`
    with P['epoch'] = epoch_idx + 1 (main.py:106,115). It also runs after the last epoch, to no effect."""
    return epoch >= warmup


def apl_quota(
    unobserved_per_class: torch.Tensor, epochs: int, warmup: int, proportion: float = APL_PROPORTION
) -> torch.Tensor:
    """Entries per class to pseudo-label after each APL epoch: floor(proportion * U_j / (T - warmup)).

    U_j counts the entries of class j unobserved at the start of training, fixed for the whole run
    (`unlabel_num`, main.py:203-205), not those still unlabelled now; int() truncates (main.py:290). Over the
    T - warmup + 1 passes the quotas can exceed U_j: the late passes then take what is left.
    """
    if epochs <= warmup:
        raise ValueError(f"APL needs more epochs ({epochs}) than warm-up epochs ({warmup})")
    share = Fraction(str(proportion))
    return unobserved_per_class.long() * share.numerator // (share.denominator * (epochs - warmup))


def select_lowest(scores: torch.Tensor, eligible: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """Mask of the min(quota_j, eligible count) eligible entries with the lowest score in each column j.

    `scores`, `eligible`: N x C; `quota`: C. As the reference's ascending argsort cut at the quota
    (main.py:291-292), which also takes all there is when fewer entries remain. Ties go to the lower row.
    """
    order = scores.masked_fill(~eligible, math.inf).argsort(dim=0, stable=True)
    rows = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1).expand_as(order)
    ranks = torch.empty_like(order).scatter_(0, order, rows)
    return eligible & (ranks < quota.to(scores.device))


def apl_update(
    probs: torch.Tensor,
    targets: torch.Tensor,
    pseudo_mask: torch.Tensor,
    pseudo_values: torch.Tensor,
    quota: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APL pass on the whole training set: (new mask, new values) with s = p on the chosen entries.

    `probs` are the model's predictions on every training image (N x C). The reference takes them in eval mode
    over its training loader, so with that loader's random horizontal flips (main.py:247,254;
    datasets.py:59-64). Eligible: unobserved and not yet pseudo-labelled (its `label == 0`, main.py:286-287).
    """
    chosen = select_lowest(probs, (targets == -1) & ~pseudo_mask, quota)
    return pseudo_mask | chosen, torch.where(chosen, probs, pseudo_values)
