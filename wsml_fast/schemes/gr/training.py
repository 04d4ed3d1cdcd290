"""GR loss (Chen et al., IJCAI 2024): a robust loss on unobserved entries, weighted and soft-labelled by p itself.

An unobserved entry with p = sigmoid(x) costs v * [k * (1 - p^q2) / q2 + (1 - k) * (1 - (1 - p)^q3) / q3]:
the first term pulls p up (a generalized cross-entropy toward 1), the second pulls it down (toward 0), mixed by
the soft pseudo-label k = sigmoid(w p + b) and weighted by v = exp(-(p - mu)^2 / (2 sigma^2)). k and v are
computed from the detached p (yan4xi1/GRLoss train.py:109-115, models.py:88-89,118-119), so the gradient runs
through the two robust terms only. An observed positive costs -log p, an observed negative (which the reference's
single-positive data never has) -log(1 - p). Mean over all B*C entries, as losses.py:13 of the reference.

Differences from the reference, for numerical safety in fp32 (the same values while p does not underflow):
- -log p is softplus(-x), not -log(p + 1e-7) (losses.py:37-40): equal to within 1e-7 / p, but the reference
  caps the loss at -log(1e-7) = 16.1 and its gradient fades once p << 1e-7; ours keeps pushing.
- p^q2 and (1 - p)^q3 are exp(q * logsigmoid(+-x)), and 1 - e^z is -expm1(z) (losses.py:42-46 uses torch.pow on
  p): the same values, but where fp32 sigmoid underflows to p = 0 (x < -88) the reference's loss is 1/q2 instead
  of (1 - e^(q2 x))/q2 and torch.pow's backward gives nan; ours stays exact with the finite gradient
  -p^q2 (1 - p); and (1 - p)^q3 stays exact for x > 17, where 1 - p rounds to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from wsml_fast.learning.contract import WsmlCallback
from wsml_fast.schemes.build import SchemeContext, SchemeParts
from wsml_fast.schemes.gr import GR_B, GR_MU, GR_Q, GR_SIGMA, GR_W
from wsml_fast.schemes.losses import PartialLabelLoss, negative_term, positive_term

if TYPE_CHECKING:
    from wsml_fast.training.config import TrainConfig


@dataclass(frozen=True)
class GrConfig:
    """The schedule's end points and the robust exponents; defaults: the gr settings' declared defaults.

    The reference's `beta` list is [w0, wT, b0, bT] and its `alpha` list [mu0, sigma0, muT, sigmaT];
    `linear_epochs` is its `linear_init` n (train.py:61), the epochs before the schedules start moving.
    """

    w0: float = GR_W.default[0]
    w_end: float = GR_W.default[1]
    b0: float = GR_B.default[0]
    b_end: float = GR_B.default[1]
    mu0: float = GR_MU.default[0]
    sigma0: float = GR_SIGMA.default[0]
    mu_end: float = GR_MU.default[1]
    sigma_end: float = GR_SIGMA.default[1]
    q2: float = GR_Q.default[0]
    q3: float = GR_Q.default[1]
    linear_epochs: int = 0


class GrParams(NamedTuple):
    """The loss's parameters for one training epoch."""

    w: float
    b: float
    mu: float
    sigma: float
    q2: float
    q3: float


def _toward(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * fraction


def gr_params(config: GrConfig, epoch: int, epochs: int) -> GrParams:
    """(w, b, mu, sigma, q2, q3) for training epoch `epoch` (from 1) of `epochs`.

    The reference counts epochs from 1 too (train.py:57), so its values hold as written (train.py:69-75):
    w, b move by max(t - n - 1, 0) / (T - n), one epoch behind mu, sigma, which move by max(t - n, 0) / (T - n).
    So mu, sigma reach their end values in the last epoch, w, b never quite do.
    """
    n = config.linear_epochs
    if not 1 <= epoch <= epochs or epochs <= n:
        raise ValueError(f"epoch {epoch} of {epochs} (with {n} linear epochs) is outside the schedule")
    late, early = max(epoch - n - 1, 0) / (epochs - n), max(epoch - n, 0) / (epochs - n)
    return GrParams(
        w=_toward(config.w0, config.w_end, late),
        b=_toward(config.b0, config.b_end, late),
        mu=_toward(config.mu0, config.mu_end, early),
        sigma=_toward(config.sigma0, config.sigma_end, early),
        q2=config.q2,
        q3=config.q3,
    )


def generalized_ce(log_prob: torch.Tensor, q: float) -> torch.Tensor:
    """(1 - P^q) / q from log P: the robust loss of the reference's loss1/loss2 (losses.py:42-46)."""
    return -torch.expm1(q * log_prob) / q


def gr_unobserved(logits: torch.Tensor, params: GrParams) -> torch.Tensor:
    """v * [k (1 - p^q2)/q2 + (1 - k)(1 - (1-p)^q3)/q3] per entry, with k and v from the detached p."""
    p = torch.sigmoid(logits.detach())
    k = torch.sigmoid(params.w * p + params.b)
    v = torch.exp(-0.5 * ((p - params.mu) / params.sigma) ** 2)
    toward_one = generalized_ce(F.logsigmoid(logits), params.q2)
    toward_zero = generalized_ce(F.logsigmoid(-logits), params.q3)
    return v * (k * toward_one + (1 - k) * toward_zero)


def gr_losses(logits: torch.Tensor, targets: torch.Tensor, params: GrParams) -> torch.Tensor:
    """Per-entry GR losses of fp32 logits against 1 / 0 / -1 (unobserved) targets; the caller takes the mean."""
    observed = torch.where(targets == 1, positive_term(logits), negative_term(logits))
    return torch.where(targets == -1, gr_unobserved(logits, params), observed)


def gr_config(config: TrainConfig) -> GrConfig:
    """The GR constants of a run's configuration (the `gr_*` settings: start and end of each schedule), and the
    linear-init epochs before the schedules move, as the reference's `linear_init` n."""
    (w0, w_end), (b0, b_end) = config.gr_w, config.gr_b
    (mu0, mu_end), (sigma0, sigma_end), (q2, q3) = config.gr_mu, config.gr_sigma, config.gr_q
    linear = config.total_epochs - config.epochs  # linear-init's linear phase: the schedules wait it out
    return GrConfig(w0, w_end, b0, b_end, mu0, sigma0, mu_end, sigma_end, q2, q3, linear)


class GrLoss(PartialLabelLoss):
    """GR as a loss whose schedule parameters `GrScheduleCallback` sets at each epoch."""

    def __init__(self, params: GrParams) -> None:
        super().__init__()
        self.params = params

    def entry_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return gr_losses(logits, targets, self.params)


class GrScheduleCallback(WsmlCallback):
    """Move GR's w, b, mu, sigma along their schedules: the run's epoch t of its `epochs` (RunState)."""

    order = -10

    def __init__(self, loss: GrLoss, constants: GrConfig, epochs: int) -> None:
        self.loss, self.constants, self.epochs = loss, constants, epochs

    def before_epoch(self) -> None:
        self.loss.params = gr_params(self.constants, self.run_state.epoch, self.epochs)


def generalized_robust(context: SchemeContext) -> SchemeParts:
    constants = gr_config(context.config)
    loss = GrLoss(gr_params(constants, 1, context.total_epochs))
    return SchemeParts(loss, [GrScheduleCallback(loss, constants, context.total_epochs)])
