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

from wsml_fast.core.distributed import all_gather, rank
from wsml_fast.data.labelstore import DeviceLabels, LabelStore, row_entries
from wsml_fast.learning.contract import SchemeState, TargetsCallback, WsmlCallback
from wsml_fast.schemes.build import SchemeContext, SchemeParts
from wsml_fast.schemes.large_loss import CORRECTIONS
from wsml_fast.schemes.losses import AssumeNegativeLoss, PartialLabelLoss, positive_term

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


class LargeLossTrainingLoss(PartialLabelLoss):
    """The training loss of LL-R / LL-Ct / LL-Cp: AN, with the k largest losses among the unobserved entries of
    the global batch rejected or trained as positives from the run's epoch 2 on. `LargeLossCallback` sets
    `epoch` as each epoch begins; `selected` keeps the batch's selection over the global batch (None before
    epoch 2) for the callbacks that store and count it."""

    def __init__(self, kind: LargeLoss, delta_rel: float) -> None:
        super().__init__()
        self.kind, self.delta_rel = kind, delta_rel
        self.epoch = 1
        self.selected: torch.Tensor | None = None

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        an_losses = _ASSUME_NEGATIVE.entry_losses(logits, targets)
        if self.epoch < 2:
            self.selected = None
            return an_losses
        selected, self.selected = select_over_processes(an_losses, targets == -1, self.epoch, self.delta_rel, self.kind)
        return apply_large_loss(an_losses, positive_term(logits), selected, self.kind)


class LargeLossCallback(WsmlCallback, SchemeState):
    """The large-loss state: tells the training loss the run's epoch and, for LL-Cp, keeps the stored positives
    and lays them over every training batch's targets (they live here, in the main process: DataLoader workers
    hold stale copies of a Dataset). `lr_find` trains on AN, selects nothing and sees no stored positive."""

    order = TargetsCallback.order + 1  # lays the stored positives over the targets TargetsCallback made

    def __init__(self, loss: LargeLossTrainingLoss, n_classes: int) -> None:
        self.loss = loss
        self.stored = StoredPositives(n_classes) if loss.kind.stores else None
        self._entries: tuple[torch.Tensor, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        """LL-Cp's stored positives and the epoch of each (nothing for LL-R / LL-Ct, which store nothing)."""
        return {} if self.stored is None else self.stored.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.stored is not None:
            self.stored.load_state_dict(state)

    @property
    def selected(self) -> torch.Tensor | None:
        """The entries the loss selected in the global batch (B x N processes, C), or None."""
        return self.loss.selected

    def selected_entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the item rows of each selected entry's input, K x N: its image, then a mix's partners, or its own
        again; the classes; whether the input is a mix) of the global batch; gathered once a batch, when asked."""
        if self._entries is None:
            batch, cols = self.loss.selected.nonzero(as_tuple=True)
            mix = self.batch_mix
            mixed = all_gather(mix.mixed.to(torch.uint8)).bool()
            self._entries = all_gather(mix.items)[batch], cols, mixed[batch]
        return self._entries

    def before_fit(self) -> None:
        if self.stored is not None:
            self.stored.to(self.device)

    def before_epoch(self) -> None:
        self.loss.epoch = self.run_state.epoch

    def before_batch(self) -> None:
        self._entries = None
        if self.training and self.stored is not None:
            self.learn.yb = (self.stored.overlay(self.learn.yb[0], self.item_index),)

    def after_loss(self) -> None:
        """LL-Cp stores the selections of unmixed inputs only (`Scheme.mixing`: a mix's is no one image's)."""
        if self.training and self.stored is not None and self.selected is not None:
            rows, cols, mixed = self.selected_entries()
            self.stored.add(rows[~mixed, 0], cols[~mixed])

    def after_epoch(self) -> None:
        if self.stored is not None:
            self.stored.merge(self.run_state.epoch)


class LargeLossRecordCallback(WsmlCallback):
    """The large-loss columns of each epoch: entries selected, and, with the training set's truth, how many of
    them (and of LL-Cp's stored ones) really are positives (a mix's entry: where any of its images' is); LL-Cp's
    corrections CSV (through `write`)."""

    order = 64  # after the state merged the epoch's corrections; before the recovery mAP (65) and run log (70)

    def __init__(
        self,
        large_loss: LargeLossCallback,
        truth: LabelStore | None,
        names: tuple[list[str], list[str]],
        write_corrections: Callable[[str], None] | None,
    ) -> None:
        self.large_loss, self.truth_store, self.write_corrections = large_loss, truth, write_corrections
        self.image_names, self.class_names = list(names[0]), list(names[1])
        self.truth: DeviceLabels | None = None

    def before_fit(self) -> None:
        if self.truth_store is not None and (self.truth is None or self.truth.device != self.device):
            self.truth = self.truth_store.to(self.device)

    def before_epoch(self) -> None:
        self.n_selected = torch.zeros((), dtype=torch.long, device=self.device)
        self.n_selected_true = torch.zeros_like(self.n_selected)

    def after_loss(self) -> None:
        if not self.training or self.large_loss.selected is None:
            return
        self.n_selected += self.large_loss.selected.sum()
        if self.truth is not None:  # without a truth, LL-R / LL-Ct need no host synchronisation
            rows, cols, _ = self.large_loss.selected_entries()  # a mix's entry is true where any image's is
            self.n_selected_true += (self.truth.lookup(rows, cols[:, None].expand_as(rows)) == 1).any(1).sum()

    def after_epoch(self) -> None:
        values = {"ll_selected": int(self.n_selected)}
        if self.truth is not None:
            values["ll_fn_precision"] = _ratio(self.n_selected_true, self.n_selected)
        stored = self.large_loss.stored
        if stored is not None:
            values["ll_corrections"] = len(stored.keys)
            if self.truth is not None:
                rows, cols = stored.keys // stored.n_classes, stored.keys % stored.n_classes
                values["ll_correction_precision"] = _ratio((self.truth.lookup(rows, cols) == 1).sum(), len(rows))
            if self.write_corrections is not None:
                self.write_corrections(self._corrections_csv(stored))
        self.run_state.record(**values)

    def _corrections_csv(self, stored: StoredPositives) -> str:
        """Every entry stored as positive so far, one row (image, class, epoch) each, in order of epoch."""
        order = torch.argsort(stored.epochs, stable=True)
        keys, epochs = stored.keys[order].tolist(), stored.epochs[order].tolist()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "class", "epoch"])
        n = stored.n_classes
        writer.writerows(
            (self.image_names[key // n], self.class_names[key % n], epoch)
            for key, epoch in zip(keys, epochs, strict=True)
        )
        return text.getvalue()


def _ratio(part: torch.Tensor, whole: torch.Tensor) -> float:
    whole = int(whole)
    return int(part) / whole if whole else float("nan")


def large_loss_parts(
    kind: LargeLoss,
    delta_rel: float,
    truth: LabelStore | None,
    names: tuple[list[str], list[str]],
    write_corrections: Callable[[str], None] | None,
) -> SchemeParts:
    """The parts of a large-loss scheme: its training loss, fed and counted by its callbacks; validation reports
    AN. `names`: the training images and the classes (for the corrections CSV)."""
    loss = LargeLossTrainingLoss(kind, delta_rel)
    state = LargeLossCallback(loss, len(names[1]))
    record = LargeLossRecordCallback(state, truth, names, write_corrections)
    return SchemeParts(loss, [state, record], evaluation_loss=AssumeNegativeLoss())


def rejection(context: SchemeContext) -> SchemeParts:
    return _large_loss(context, LargeLoss.REJECTION)


def temporary_correction(context: SchemeContext) -> SchemeParts:
    return _large_loss(context, LargeLoss.TEMPORARY_CORRECTION)


def permanent_correction(context: SchemeContext) -> SchemeParts:
    return _large_loss(context, LargeLoss.PERMANENT_CORRECTION)


def _large_loss(context: SchemeContext, kind: LargeLoss) -> SchemeParts:
    table = context.table
    write = partial(context.write_run_file, CORRECTIONS) if kind.stores and context.write_run_file else None
    names = ([table.images[i] for i in table.rows("train")], table.classes)
    return large_loss_parts(kind, context.config.delta_rel, table.train_truth(), names, write)
