"""Large-loss schemes of Kim et al. (CVPR 2022): LL-R rejects, LL-Ct and LL-Cp correct the largest AN losses.

From the second training epoch on, the k unobserved entries of each batch with the largest assume-negative
loss are likely false negatives: LL-R drops their loss, LL-Ct trains them as positives for this step, LL-Cp
also stores them as observed positives for the rest of training. Like the reference code, every unobserved
entry whose loss is at least the k-th largest is modified: k entries (the reference's strict `>` only fed its
LL-Cp storage). One fault of the reference code does not exist here: its LL-Cp test (`is 'LL-Cp'`) was never
true, so its LL-Cp ran LL-Ct's growing k (and its stored labels lived in the Dataset, which DataLoader workers
copy).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from fractions import Fraction
from functools import partial

import numpy as np
import torch
from fastai.callback.core import Callback

from wsml_fast.atomic import write_text
from wsml_fast.callbacks import ItemIndexCallback, SchemeState
from wsml_fast.losses import AssumeNegativeLoss, PartialLabelLoss, positive_term
from wsml_fast.runfolder import CORRECTIONS
from wsml_fast.schemes import SCHEMES, Scheme, SchemeContext

LARGE_LOSS_SCHEMES = tuple(name for name, scheme in SCHEMES.items() if scheme.family == "large-loss")

_ASSUME_NEGATIVE = AssumeNegativeLoss()


def large_loss_k(batch_size: int, num_classes: int, epoch: int, delta_rel: float, scheme: str) -> int:
    """Entries to select per batch in training epoch `epoch` (from 1); `delta_rel` is Delta in percent.

    LL-R and LL-Ct select (t - 1) * Delta percent of the batch's B*C entries, LL-Cp a constant Delta percent
    (the rest accumulates in the stored labels). Exact arithmetic on the decimal value: the reference's
    float bookkeeping (a clean rate lowered by Delta/100 each epoch) gives k = 9 instead of 8 at B*C = 320,
    Delta = 0.5, t = 6 (the product came out as 8.000000000000007).
    """
    if scheme not in LARGE_LOSS_SCHEMES:
        raise ValueError(f"{scheme!r} is not a large-loss scheme ({', '.join(LARGE_LOSS_SCHEMES)})")
    if epoch <= 1:
        return 0
    steps = 1 if scheme == "llcp" else epoch - 1
    return math.ceil(batch_size * num_classes * steps * Fraction(str(delta_rel)) / 100)


def select_large_losses(an_losses: torch.Tensor, unobserved: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the min(k, unobserved count) unobserved entries with the largest loss in the whole batch.

    Observed entries are masked to -inf before `topk`; if fewer than k entries are unobserved, the picks that
    land on them are dropped again. No host synchronisation.
    """
    flat = an_losses.detach().flatten().masked_fill(~unobserved.flatten(), -math.inf)
    k = min(k, flat.numel())
    selected = torch.zeros_like(flat, dtype=torch.bool)
    selected[flat.topk(k).indices] = True
    return selected.view_as(unobserved) & unobserved


def apply_large_loss(
    an_losses: torch.Tensor, positive_losses: torch.Tensor, selected: torch.Tensor, scheme: str
) -> torch.Tensor:
    """Per-entry losses: LL-R gives selected entries 0 (they stay in the denominator), LL-Ct/LL-Cp their
    loss against target 1."""
    if scheme == "llr":
        return an_losses.masked_fill(selected, 0.0)
    return torch.where(selected, positive_losses, an_losses)


def large_loss_losses(
    logits: torch.Tensor, targets: torch.Tensor, k: int, scheme: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-entry losses, selected mask) of `scheme` for one batch of fp32 logits and 1/0/-1 targets."""
    an_losses = _ASSUME_NEGATIVE.entry_losses(logits, targets)
    selected = select_large_losses(an_losses, targets == -1, k)
    return apply_large_loss(an_losses, positive_term(logits), selected, scheme), selected


class LargeLossCallback(Callback, SchemeState):
    """Replace the training loss by LL-R / LL-Ct / LL-Cp and keep the training labels for LL-Cp.

    The label matrix lives here, on the model's device, and every training batch reads its targets from it
    by item index (DataLoader workers hold stale copies of the Dataset). The epoch is the run's (RunState);
    `lr_find` selects nothing.
    """

    order = ItemIndexCallback.order + 1  # needs `learn.item_index`; must precede GradientAccumulation (6)

    def __init__(
        self,
        scheme: str,
        delta_rel: float,
        train_labels: np.ndarray,
        truth: np.ndarray | None,
        image_names: list[str],
        class_names: list[str],
        write_corrections: Callable[[str], None] | None,
    ) -> None:
        large_loss_k(1, 1, 1, delta_rel, scheme)  # validates the scheme
        self.scheme, self.delta_rel = scheme, delta_rel
        self.labels = torch.tensor(train_labels, dtype=torch.float32)  # a copy: LL-Cp writes to it
        self.truth = None if truth is None else torch.as_tensor(np.asarray(truth) == 1)
        self.image_names, self.class_names = list(image_names), list(class_names)
        self.write_corrections = write_corrections
        # LL-Cp: the epoch in which each entry was stored as positive (0: never)
        self.corrected_in = torch.zeros(self.labels.shape, dtype=torch.int16) if scheme == "llcp" else None

    def state_dict(self) -> dict:
        """The stored training labels (LL-Cp's corrections included) and the epoch of each correction."""
        state = {"labels": self.labels.cpu()}
        if self.corrected_in is not None:
            state["corrected_in"] = self.corrected_in.cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.labels = state["labels"].to(self.labels.device)
        if self.corrected_in is not None:
            self.corrected_in = state["corrected_in"].to(self.corrected_in.device)

    def before_fit(self) -> None:
        device = next(self.learn.model.parameters()).device
        self.labels = self.labels.to(device)
        self.truth = None if self.truth is None else self.truth.to(device)
        self.corrected_in = None if self.corrected_in is None else self.corrected_in.to(device)

    def before_epoch(self) -> None:
        self.n_selected = torch.zeros((), dtype=torch.long, device=self.labels.device)
        self.n_selected_true = torch.zeros_like(self.n_selected)

    def before_batch(self) -> None:
        if self.learn.training:
            self.learn.yb = (self.labels[self.learn.item_index],)

    def after_loss(self) -> None:
        epoch = self.run_state.epoch
        if not self.learn.training or not self.run_state.active or epoch < 2:
            return
        logits, targets = self.learn.pred.float(), self.learn.yb[0]
        k = large_loss_k(logits.shape[0], logits.shape[1], epoch, self.delta_rel, self.scheme)
        losses, selected = large_loss_losses(logits, targets, k, self.scheme)
        loss = losses.mean()
        self.learn.loss_grad, self.learn.loss = loss, loss.detach().clone()

        index = self.learn.item_index
        self.n_selected += selected.sum()
        if self.truth is not None:
            self.n_selected_true += (selected & self.truth[index]).sum()
        if self.corrected_in is not None:
            self.labels[index] = targets.masked_fill(selected, 1.0)
            self.corrected_in[index] = self.corrected_in[index].masked_fill(selected, epoch)

    def after_epoch(self) -> None:
        if not self.run_state.active:
            return
        extras = {"ll_selected": int(self.n_selected)}
        if self.truth is not None:
            extras["ll_fn_precision"] = _ratio(self.n_selected_true, self.n_selected)
        if self.corrected_in is not None:
            stored = self.corrected_in > 0
            extras["ll_corrections"] = int(stored.sum())
            if self.truth is not None:
                extras["ll_correction_precision"] = _ratio((stored & self.truth).sum(), stored.sum())
            if self.write_corrections is not None:
                self.write_corrections(self._corrections_csv())
        self.run_state.record(**extras)

    def _corrections_csv(self) -> str:
        """Every entry stored as positive so far, one row (image, class, epoch) each, in order of epoch."""
        rows, cols = (self.corrected_in > 0).nonzero(as_tuple=True)
        epochs = self.corrected_in[rows, cols]
        order = torch.argsort(epochs, stable=True).tolist()
        rows, cols, epochs = rows.tolist(), cols.tolist(), epochs.tolist()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "class", "epoch"])
        writer.writerows((self.image_names[rows[i]], self.class_names[cols[i]], epochs[i]) for i in order)
        return text.getvalue()


def _ratio(part: torch.Tensor, whole: torch.Tensor) -> float:
    whole = int(whole)
    return int(part) / whole if whole else float("nan")


def parts(scheme: Scheme, context: SchemeContext) -> tuple[PartialLabelLoss, list[Callback]]:
    """AN as the loss (validation reports it); the callback replaces the training loss from epoch 2 on."""
    table, rows = context.table, context.table.rows("train")
    write = partial(write_text, context.run.file(CORRECTIONS)) if scheme.name == "llcp" else None
    callback = LargeLossCallback(
        scheme.name,
        context.config.delta_rel,
        context.train_labels,
        table.train_truth(),
        [table.images[i] for i in rows],
        table.classes,
        write,
    )
    return AssumeNegativeLoss(), [callback]
