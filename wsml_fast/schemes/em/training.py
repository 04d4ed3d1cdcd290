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

import csv
import io
import math
from collections.abc import Callable
from fractions import Fraction
from functools import partial

import torch

from wsml_fast.data.labelstore import LabelStore
from wsml_fast.learning.contract import MIXING_ORDER, BatchMix, SchemeState, WsmlCallback
from wsml_fast.schemes.build import SchemeContext, SchemeParts
from wsml_fast.schemes.em import PSEUDO_LABELS
from wsml_fast.schemes.losses import PartialLabelLoss, negative_term, positive_term, soft_bce

APL_PROPORTION = 0.9  # the reference's `neg_proportion` (main.py:327,334,341,348); per-dataset settings: recipes


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


def batch_pseudo_labels(
    mask: torch.Tensor, values: torch.Tensor, observed: torch.Tensor, mix: BatchMix
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pseudo-labels (mask, values) of a batch's inputs: an image's own; a mix's where each of its images is a
    known negative or pseudo-labelled, with s = 1 - prod(1 - s_i), the chance that any of them is positive (a
    known negative's s is 0). `mask`, `values`, `observed`: N x C, every training entry's."""
    items = mix.items
    negative = (mask[items] | (observed[items] == 0)).all(1)
    chance = 1 - (1 - values[items].masked_fill(~mask[items], 0.0)).prod(1)
    mixed = mix.mixed[:, None]
    return torch.where(mixed, negative, mask[items[:, 0]]), torch.where(mixed, chance, values[items[:, 0]])


class EntropyMaximizationLoss(PartialLabelLoss):
    """EM as a loss: what `em` trains on, and what `em-apl` reports on validation."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return em_losses(logits, targets, self.alpha)


class EntropyMaximizationAplLoss(PartialLabelLoss):
    """EM-APL's training loss: `em_apl_losses` with the batch's pseudo-labels, which `AplCallback` sets before
    each batch (`pseudo_mask`, `pseudo_values`: the batch's rows)."""

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.pseudo_mask: torch.Tensor | None = None
        self.pseudo_values: torch.Tensor | None = None

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return em_apl_losses(logits, targets, self.alpha, self.beta, self.pseudo_mask, self.pseudo_values)


class AplCallback(WsmlCallback, SchemeState):
    """APL's pseudo-labels: kept here, in the main process (DataLoader workers hold stale copies of a Dataset),
    given to the training loss for each batch, and added after each epoch from `warmup` on by one pass over the
    training images. The pass scores the training images without augmentation (the reference's pass went
    through its training loader's random flips); it is skipped after the last epoch, where its labels would
    never be trained on. `lr_find` trains on EM and leaves them alone. It acts after the mixing, which it reads to
    give a mix its pseudo-labels (`batch_pseudo_labels`)."""

    order = MIXING_ORDER + 1

    def __init__(
        self,
        loss: EntropyMaximizationAplLoss,
        train_labels: LabelStore,
        warmup: int,
        epochs: int,
        score_train: Callable[[torch.nn.Module], torch.Tensor],
    ) -> None:
        self.loss, self.warmup, self.epochs, self.score_train = loss, warmup, epochs, score_train
        self.observed = torch.from_numpy(train_labels.to_dense())  # APL scores and labels every entry: dense
        self.quota = apl_quota((self.observed == -1).sum(0), epochs, warmup)
        self.mask = torch.zeros(self.observed.shape, dtype=torch.bool)
        self.values = torch.zeros(self.observed.shape, dtype=torch.float32)
        self.labelled_in = torch.zeros(self.observed.shape, dtype=torch.int16)  # epoch of each pseudo-label
        self.labelled_now = False  # whether this epoch's pass added pseudo-labels

    def state_dict(self) -> dict:
        return {"mask": self.mask.cpu(), "values": self.values.cpu(), "labelled_in": self.labelled_in.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.mask.device
        self.mask, self.values = state["mask"].to(device), state["values"].to(device)
        self.labelled_in = state["labelled_in"].to(device)

    def before_fit(self) -> None:
        for name in ("observed", "mask", "values", "labelled_in"):
            setattr(self, name, getattr(self, name).to(self.device))

    def before_batch(self) -> None:
        if self.training:
            mask, values = batch_pseudo_labels(self.mask, self.values, self.observed, self.batch_mix)
            self.loss.pseudo_mask, self.loss.pseudo_values = mask, values

    def after_epoch(self) -> None:
        epoch = self.run_state.epoch
        self.labelled_now = apl_due(epoch, self.warmup) and epoch < self.epochs
        if self.labelled_now:
            probs = self.score_train(self.learn.model).to(self.mask.device)
            mask, self.values = apl_update(probs, self.observed, self.mask, self.values, self.quota)
            self.labelled_in[mask & ~self.mask] = epoch
            self.mask = mask


class AplRecordCallback(WsmlCallback):
    """APL's columns of each epoch (pseudo-labels so far and, with the training set's truth, the share that
    really are negatives) and its pseudo-labels CSV (through `write`) after each pass."""

    order = 64  # after the pass (AplCallback); before the recovery mAP (65) and the run log (70)

    def __init__(
        self,
        apl: AplCallback,
        truth: LabelStore | None,
        write: Callable[[str], None] | None = None,
        names: tuple[list[str], list[str]] = ([], []),
    ) -> None:
        self.apl, self.write, (self.image_names, self.class_names) = apl, write, names
        self.truth = None if truth is None else torch.from_numpy(truth.to_dense() == 1)

    def before_fit(self) -> None:
        if self.truth is not None:
            self.truth = self.truth.to(self.device)

    def after_epoch(self) -> None:
        mask = self.apl.mask
        if self.apl.labelled_now and self.write is not None:
            self.write(self._pseudo_labels_csv())
        values = {"apl_pseudo_labels": int(mask.sum())}
        if self.truth is not None:  # pseudo-negatives that really are negatives
            labelled = int(mask.sum())
            true = int((mask & ~self.truth).sum())
            values["apl_precision"] = true / labelled if labelled else float("nan")
        self.run_state.record(**values)

    def _pseudo_labels_csv(self) -> str:
        apl = self.apl
        rows, cols = apl.mask.nonzero(as_tuple=True)
        epochs, values = apl.labelled_in[rows, cols].tolist(), apl.values[rows, cols].tolist()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "class", "value", "epoch"])
        for row, col, value, epoch in zip(rows.tolist(), cols.tolist(), values, epochs, strict=True):
            writer.writerow([self.image_names[row], self.class_names[col], f"{value:.6f}", epoch])
        return text.getvalue()


def entropy_maximization(context: SchemeContext) -> SchemeParts:
    return SchemeParts(EntropyMaximizationLoss(context.config.em_alpha))


def entropy_maximization_apl(context: SchemeContext) -> SchemeParts:
    """EM-APL as the training loss, fed by the callback's pseudo-labels; validation reports EM."""
    config, table = context.config, context.table
    loss = EntropyMaximizationAplLoss(config.em_alpha, config.em_beta)
    apl = AplCallback(loss, context.train_labels, config.apl_warmup, context.total_epochs, context.score_train)
    names = ([table.images[i] for i in table.rows("train")], table.classes)
    write = partial(context.write_run_file, PSEUDO_LABELS) if context.write_run_file else None  # process 0 alone
    record = AplRecordCallback(apl, table.train_truth(), write, names)
    return SchemeParts(loss, [apl, record], evaluation_loss=EntropyMaximizationLoss(config.em_alpha))
