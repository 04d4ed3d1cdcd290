"""Cole et al. (CVPR 2021)'s losses for single positive labels: each scheme is one loss and no callback."""

from __future__ import annotations

from collections.abc import Callable

from fastai.callback.core import Callback

from wsml_fast.losses import (
    LABEL_SMOOTHING,
    AssumeNegativeLoss,
    ExpectedPositiveLoss,
    KnownLabelLoss,
    PartialLabelLoss,
)
from wsml_fast.schemes import Scheme, SchemeContext

LOSSES: dict[str, Callable[[SchemeContext], PartialLabelLoss]] = {
    "an": lambda context: AssumeNegativeLoss(),
    "an-ls": lambda context: AssumeNegativeLoss(smoothing=LABEL_SMOOTHING),
    "wan": lambda context: AssumeNegativeLoss(unobserved_weight=1 / (len(context.table.classes) - 1)),
    "epr": lambda context: ExpectedPositiveLoss(context.expected_positives),
    "iu": lambda context: KnownLabelLoss(),  # on the observed labels
    "iun": lambda context: KnownLabelLoss(),  # on the observed positives and truth.csv's negatives
    "bce": lambda context: KnownLabelLoss(),  # on the full labels
    "bce-ls": lambda context: KnownLabelLoss(smoothing=LABEL_SMOOTHING),
}


def parts(scheme: Scheme, context: SchemeContext) -> tuple[PartialLabelLoss, list[Callback]]:
    return LOSSES[scheme.name](context), []
