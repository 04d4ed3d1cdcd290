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
from enum import Enum
from fractions import Fraction
from functools import partial

import torch
from fastai.callback.core import Callback

from wsml_fast.callbacks import SchemeState, TargetsCallback
from wsml_fast.distributed import all_gather, rank
from wsml_fast.labelstore import DeviceLabels, LabelStore, row_entries
from wsml_fast.losses import AssumeNegativeLoss, positive_term
from wsml_fast.runfolder import CORRECTIONS
from wsml_fast.schemes.build import SchemeContext, SchemeParts

_ASSUME_NEGATIVE = AssumeNegativeLoss()


class LargeLoss(Enum):
    """What a large-loss scheme does with the entries it selects."""

    REJECTION = "rejection"  # LL-R: their loss counts 0
    TEMPORARY_CORRECTION = "temporary_correction"  # LL-Ct: trained as positives for this step
    PERMANENT_CORRECTION = "permanent_correction"  # LL-Cp: also stored as observed positives from then on

    @property
    def stores(self) -> bool:
        """Whether the selected entries are stored as positives (and k stays constant: they accumulate there)."""
        return self is LargeLoss.PERMANENT_CORRECTION


def large_loss_k(batch_size: int, num_classes: int, epoch: int, delta_rel: float, kind: LargeLoss) -> int:
    """Entries to select per batch in training epoch `epoch` (from 1); `delta_rel` is Delta in percent.

    LL-R and LL-Ct select (t - 1) * Delta percent of the batch's B*C entries, LL-Cp a constant Delta percent
    (the rest accumulates in the stored labels). Exact arithmetic on the decimal value: the reference's
    float bookkeeping (a clean rate lowered by Delta/100 each epoch) gives k = 9 instead of 8 at B*C = 320,
    Delta = 0.5, t = 6 (the product came out as 8.000000000000007).
    """
    if epoch <= 1:
        return 0
    steps = 1 if kind.stores else epoch - 1
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


def select_over_processes(
    an_losses: torch.Tensor, unobserved: torch.Tensor, epoch: int, delta_rel: float, kind: LargeLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """(this process's selected entries, the global batch's). In a data-parallel run the k largest losses are
    chosen over the global batch: every process gathers the others' losses (observed entries at -inf), selects
    exactly what one process would on the concatenated batch, and keeps its own slice to apply; each process
    knows the whole selection, so LL-Cp's stored positives stay identical everywhere. With one process the
    global batch is the batch. Bytes sent per process and step: B x C x 4 (the fp32 losses)."""
    masked = an_losses.detach().masked_fill(~unobserved, -math.inf)
    everyone = all_gather(masked)
    k = large_loss_k(everyone.shape[0], everyone.shape[1], epoch, delta_rel, kind)
    every_selected = select_large_losses(everyone, everyone > -math.inf, k)
    start = rank() * len(an_losses) if len(everyone) > len(an_losses) else 0
    return every_selected[start : start + len(an_losses)], every_selected


def apply_large_loss(
    an_losses: torch.Tensor, positive_losses: torch.Tensor, selected: torch.Tensor, kind: LargeLoss
) -> torch.Tensor:
    """Per-entry losses: LL-R gives selected entries 0 (they stay in the denominator), LL-Ct/LL-Cp their
    loss against target 1."""
    if kind is LargeLoss.REJECTION:
        return an_losses.masked_fill(selected, 0.0)
    return torch.where(selected, positive_losses, an_losses)


def large_loss_losses(
    logits: torch.Tensor, targets: torch.Tensor, k: int, kind: LargeLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-entry losses, selected mask) of `kind` for one batch of fp32 logits and 1/0/-1 targets."""
    an_losses = _ASSUME_NEGATIVE.entry_losses(logits, targets)
    selected = select_large_losses(an_losses, targets == -1, k)
    return apply_large_loss(an_losses, positive_term(logits), selected, kind), selected


class StoredPositives:
    """LL-Cp's corrections: the entries stored as positives, and the epoch of each, on the model's device.

    Sorted flat keys (row * C + class, int64) with an int16 epoch each: 10 bytes a correction, so memory grows
    with the corrections, from nothing. A bit-packed images x classes matrix would take a fixed 2 GB at
    OpenImages' 1.7 M x 9,600 and lose the epochs; LL-Cp at Delta 0.2% with batches of 64 stores about 33 M
    corrections (330 MB) an epoch there, so the keys stay the smaller for the first six epochs, and scale down
    with any smaller dataset. A row is visited once an epoch, so an epoch's new keys are merged at its end.
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.keys = torch.zeros(0, dtype=torch.int64)
        self.epochs = torch.zeros(0, dtype=torch.int16)
        self.new: list[torch.Tensor] = []

    def to(self, device: torch.device) -> None:
        self.keys, self.epochs = self.keys.to(device), self.epochs.to(device)

    def overlay(self, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The batch's targets with every stored positive of its rows set to 1."""
        owner, cols, _ = row_entries(self.keys, rows, self.n_classes)
        targets = targets.clone()
        targets[owner, cols] = 1.0
        return targets

    def add(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.new.append(rows * self.n_classes + cols)

    def merge(self, epoch: int) -> None:
        """The epoch's new corrections join the stored ones (kept sorted)."""
        if not self.new:
            return
        new = torch.cat(self.new)
        keys = torch.cat([self.keys, new])
        epochs = torch.cat([self.epochs, torch.full_like(new, epoch, dtype=torch.int16)])
        order = torch.argsort(keys)
        self.keys, self.epochs, self.new = keys[order], epochs[order], []

    def state_dict(self) -> dict:
        return {"keys": self.keys.cpu(), "epochs": self.epochs.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.keys.device
        self.keys, self.epochs, self.new = state["keys"].to(device), state["epochs"].to(device), []


class LargeLossCallback(Callback, SchemeState):
    """Replace the training loss by LL-R / LL-Ct / LL-Cp; for LL-Cp, keep the stored positives and lay them
    over every training batch's targets (they live here, in the main process: DataLoader workers hold stale
    copies of a Dataset). The epoch is the run's (RunState); `lr_find` selects nothing. With the training set's
    truth, it reports how many of the selected entries, and of the stored ones, really are positives.
    """

    order = TargetsCallback.order + 1  # needs `learn.item_index`; must precede GradientAccumulation (6)

    def __init__(
        self,
        kind: LargeLoss,
        delta_rel: float,
        n_classes: int,
        truth: LabelStore | None,
        image_names: list[str],
        class_names: list[str],
        write_corrections: Callable[[str], None] | None,
    ) -> None:
        self.kind, self.delta_rel, self.truth_store = kind, delta_rel, truth
        self.image_names, self.class_names = list(image_names), list(class_names)
        self.write_corrections = write_corrections
        self.stored = StoredPositives(n_classes) if kind.stores else None
        self.truth: DeviceLabels | None = None

    def state_dict(self) -> dict:
        """LL-Cp's stored positives and the epoch of each (nothing for LL-R / LL-Ct, which store nothing)."""
        return {} if self.stored is None else self.stored.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.stored is not None:
            self.stored.load_state_dict(state)

    def before_fit(self) -> None:
        self.device = device = next(self.learn.model.parameters()).device
        if self.truth_store is not None and (self.truth is None or self.truth.device != device):
            self.truth = self.truth_store.to(device)
        if self.stored is not None:
            self.stored.to(device)

    def before_epoch(self) -> None:
        self.n_selected = torch.zeros((), dtype=torch.long, device=self.device)
        self.n_selected_true = torch.zeros_like(self.n_selected)

    def before_batch(self) -> None:
        if self.learn.training and self.stored is not None:
            self.learn.yb = (self.stored.overlay(self.learn.yb[0], self.learn.item_index),)

    def after_loss(self) -> None:
        epoch = self.run_state.epoch
        if not self.learn.training or not self.run_state.active or epoch < 2:
            return
        logits, targets = self.learn.pred.float(), self.learn.yb[0]
        an_losses = _ASSUME_NEGATIVE.entry_losses(logits, targets)
        selected, every_selected = select_over_processes(an_losses, targets == -1, epoch, self.delta_rel, self.kind)
        loss = apply_large_loss(an_losses, positive_term(logits), selected, self.kind).mean()
        self.learn.loss_grad, self.learn.loss = loss, loss.detach().clone()
        self.n_selected += every_selected.sum()
        if self.truth is None and self.stored is None:
            return  # LL-R / LL-Ct without a truth: no host synchronisation
        batch, cols = every_selected.nonzero(as_tuple=True)
        rows = all_gather(self.learn.item_index)[batch]  # the global batch's item indices
        if self.truth is not None:
            self.n_selected_true += (self.truth.lookup(rows, cols) == 1).sum()
        if self.stored is not None:
            self.stored.add(rows, cols)

    def after_epoch(self) -> None:
        if not self.run_state.active:
            return
        values = {"ll_selected": int(self.n_selected)}
        if self.truth is not None:
            values["ll_fn_precision"] = _ratio(self.n_selected_true, self.n_selected)
        if self.stored is not None:
            self.stored.merge(self.run_state.epoch)
            values["ll_corrections"] = len(self.stored.keys)
            if self.truth is not None:
                rows, cols = self.stored.keys // self.stored.n_classes, self.stored.keys % self.stored.n_classes
                values["ll_correction_precision"] = _ratio((self.truth.lookup(rows, cols) == 1).sum(), len(rows))
            if self.write_corrections is not None:
                self.write_corrections(self._corrections_csv())
        self.run_state.record(**values)

    def _corrections_csv(self) -> str:
        """Every entry stored as positive so far, one row (image, class, epoch) each, in order of epoch."""
        order = torch.argsort(self.stored.epochs, stable=True)
        keys, epochs = self.stored.keys[order].tolist(), self.stored.epochs[order].tolist()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "class", "epoch"])
        n = self.stored.n_classes
        writer.writerows(
            (self.image_names[key // n], self.class_names[key % n], epoch)
            for key, epoch in zip(keys, epochs, strict=True)
        )
        return text.getvalue()


def _ratio(part: torch.Tensor, whole: torch.Tensor) -> float:
    whole = int(whole)
    return int(part) / whole if whole else float("nan")


def rejection(context: SchemeContext) -> SchemeParts:
    return _large_loss(context, LargeLoss.REJECTION)


def temporary_correction(context: SchemeContext) -> SchemeParts:
    return _large_loss(context, LargeLoss.TEMPORARY_CORRECTION)


def permanent_correction(context: SchemeContext) -> SchemeParts:
    return _large_loss(context, LargeLoss.PERMANENT_CORRECTION)


def _large_loss(context: SchemeContext, kind: LargeLoss) -> SchemeParts:
    """AN as the loss (validation reports it); the callback replaces the training loss from epoch 2 on."""
    table, rows = context.table, context.table.rows("train")
    write = partial(context.run.write_text, CORRECTIONS) if kind.stores and context.run.writes else None
    callback = LargeLossCallback(
        kind,
        context.config.delta_rel,
        len(table.classes),
        table.train_truth(),
        [table.images[i] for i in rows],
        table.classes,
        write,
    )
    return SchemeParts(AssumeNegativeLoss(), [callback])
