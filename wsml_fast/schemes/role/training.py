"""ROLE (Cole et al., CVPR 2021): learn a label estimate for every training entry together with the classifier.

The estimates are a free N x C matrix of logits (Cole et al.'s `LabelEstimator`), trained by their own Adam at
10x the classifier's learning rate on the same loss. Each side learns from the other with the other's side
detached, plus the observed positives and the expected-positive regularizer:

    L'(F | Y) = mean over B*C of [BCE(f, sg(y)) + 1[z = 1] * -log f] + ((mean_b sum_c f - k) / C)^2
    L_ROLE    = (L'(F | Y) + L'(Y | F)) / 2

which is the reference's `loss_role` term by term (its 0.5 * (pos_1 + pos_2) + 0.5 * (cross_1 + cross_2) over
B*C, plus 0.5 * (reg_1 + reg_2)). Differences: -log is computed from logits (the reference adds 1e-5 inside
the log of probabilities), and observed negatives (which the reference's single-positive data never had)
enter only through the estimates' start value 0.005, as the reference's estimator initialisation has it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wsml_fast.core.distributed import all_gather, in_group, world_size
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.learning.contract import SchemeState, TargetsCallback, WsmlCallback, optimizer_state
from wsml_fast.schemes.build import SchemeContext, SchemeParts
from wsml_fast.schemes.losses import AssumeNegativeLoss, ExpectedPositiveLoss, soft_bce

START_POSITIVE, START_NEGATIVE = 0.995, 0.005  # the reference's start values for observed labels
START_UNOBSERVED = (0.4, 0.6)  # unobserved entries start uniformly in this probability range


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def initial_estimates(train_labels: LabelStore, generator: torch.Generator | None = None) -> torch.Tensor:
    """Start logits of the estimates: near-certain where observed, undecided (0.4 to 0.6) where not."""
    labels = torch.from_numpy(train_labels.to_dense())  # ROLE's estimates are dense by design
    low, high = START_UNOBSERVED
    probs = low + (high - low) * torch.rand(labels.shape, generator=generator)
    logits = torch.log(probs / (1 - probs))
    logits[labels == 1] = _logit(START_POSITIVE)
    logits[labels == 0] = _logit(START_NEGATIVE)
    return logits


def role_loss(
    logits: torch.Tensor, estimate_logits: torch.Tensor, targets: torch.Tensor, expected_positives: float
) -> torch.Tensor:
    """L_ROLE of one batch: classifier and estimates each fit the other (detached) and the observed positives."""
    epr = ExpectedPositiveLoss(expected_positives)

    def one_side(learner: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return soft_bce(learner, torch.sigmoid(teacher).detach()).mean() + epr(learner, targets)

    return (one_side(logits, estimate_logits) + one_side(estimate_logits, logits)) / 2


class RoleLoss(nn.Module):
    """L_ROLE as the Learner's training loss: the classifier's logits against the batch's label estimates, which
    `RoleCallback` sets (`estimates`, rows of its estimate matrix, with their gradient) before each batch."""

    def __init__(self, expected_positives: float | None) -> None:
        super().__init__()
        if expected_positives is None:
            raise ValueError("--scheme role needs --expected-positives (the expected positives per image)")
        self.expected_positives = expected_positives
        self.estimates: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return role_loss(logits.float(), self.estimates, targets, self.expected_positives)


class RoleCallback(WsmlCallback, SchemeState):
    """Keep the label estimates, give the training loss the batch's rows of them, and step them with every step
    of the model.

    The estimates' learning rate is `lr_mult` (10, Cole et al.'s) times the base learning rate as the schedule
    has it now: the head group's current rate over the head multiplier, whatever that multiplier and whether
    the Learner trains the head alone (linear) or body and head. `lr_find` trains on AN and leaves them alone.
    Under fp16 the estimates are stepped through fastai's GradScaler like a second optimizer. The estimates
    and their optimizer's moments live across every fit of the run, and go into the checkpoint together.
    """

    order = TargetsCallback.order + 1

    def __init__(
        self,
        loss: RoleLoss,
        train_labels: LabelStore,
        head_lr_mult: float = 1.0,
        lr_mult: float = 10.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.loss, self.head_lr_mult, self.lr_mult = loss, head_lr_mult, lr_mult
        self.estimate_logits = torch.nn.Parameter(initial_estimates(train_labels, generator))
        self.estimate_opt = torch.optim.Adam([self.estimate_logits])
        self.stepped_rows: list[torch.Tensor] = []  # the item indices whose gradients the next step takes

    @property
    def estimates(self) -> torch.Tensor:
        """Current label estimates as probabilities (N x C)."""
        return torch.sigmoid(self.estimate_logits.detach())

    def state_dict(self) -> dict:
        return {"estimate_logits": self.estimate_logits.detach().cpu(), "optimizer": optimizer_state(self.estimate_opt)}

    def load_state_dict(self, state: dict) -> None:
        saved = state["estimate_logits"]
        if saved.shape != self.estimate_logits.shape:
            expected = tuple(self.estimate_logits.shape)
            raise ValueError(f"label estimates of shape {tuple(saved.shape)}, expected {expected}")
        with torch.no_grad():
            self.estimate_logits.copy_(saved)
        if "optimizer" in state:
            self.estimate_opt.load_state_dict(state["optimizer"])

    def before_fit(self) -> None:
        device = self.device
        if self.estimate_logits.device != device:  # moved in place: the optimizer keeps its parameter
            self.estimate_logits.data = self.estimate_logits.data.to(device)
            for state in self.estimate_opt.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        state[key] = value.to(device)
        self.estimate_opt.zero_grad()
        self.stepped_rows = []

    def before_batch(self) -> None:
        if self.training:
            self.loss.estimates = self.estimate_logits[self.item_index]
            self.stepped_rows.append(self.item_index)

    def after_step(self) -> None:
        if in_group():
            self._share_gradients()
        for group in self.estimate_opt.param_groups:
            group["lr"] = self.lr_mult * float(self.learn.opt.hypers[-1]["lr"]) / self.head_lr_mult
        scaler = getattr(self.learn, "scaler", None)  # set by fastai's MixedPrecision during its fits
        if scaler is not None:
            scaler.step(self.estimate_opt)
        else:
            self.estimate_opt.step()
        self.estimate_opt.zero_grad()
        self.stepped_rows = []

    def _share_gradients(self) -> None:
        """In a data-parallel run each process has the gradient of its own batch's rows only: every process takes
        all of them (their mean over the processes, as DDP gives the model), so the estimates stay the same on
        every process. The processes' rows are distinct: one global batch holds each image once (and the batches
        whose gradients accumulate into one step, --accumulate, are of one epoch)."""
        grad, index = self.estimate_logits.grad, torch.cat(self.stepped_rows)
        rows, values = all_gather(index), all_gather(grad[index]) / world_size()
        grad.zero_()
        grad.index_add_(0, rows, values)


def role_parts(
    train_labels: LabelStore,
    expected_positives: float | None,
    head_lr_mult: float = 1.0,
    generator: torch.Generator | None = None,
) -> SchemeParts:
    """L_ROLE as the training loss, fed by the callback's label estimates; validation reports AN."""
    loss = RoleLoss(expected_positives)
    callback = RoleCallback(loss, train_labels, head_lr_mult, generator=generator)
    return SchemeParts(loss, [callback], evaluation_loss=AssumeNegativeLoss())


def role(context: SchemeContext) -> SchemeParts:
    return role_parts(context.train_labels, context.expected_positives, context.config.head_lr_mult)
