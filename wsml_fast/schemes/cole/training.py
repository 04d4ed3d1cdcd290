"""Cole et al. (CVPR 2021)'s losses for single positive labels: each scheme is one loss and no callback."""

from __future__ import annotations

from wsml_fast.schemes.build import SchemeContext, SchemeParts
from wsml_fast.schemes.losses import LABEL_SMOOTHING, AssumeNegativeLoss, ExpectedPositiveLoss, KnownLabelLoss


def assume_negative(context: SchemeContext) -> SchemeParts:
    return SchemeParts(AssumeNegativeLoss())


def assume_negative_smoothed(context: SchemeContext) -> SchemeParts:
    return SchemeParts(AssumeNegativeLoss(smoothing=LABEL_SMOOTHING))


def weak_assume_negative(context: SchemeContext) -> SchemeParts:
    return SchemeParts(AssumeNegativeLoss(unobserved_weight=1 / (len(context.table.classes) - 1)))


def expected_positive(context: SchemeContext) -> SchemeParts:
    return SchemeParts(ExpectedPositiveLoss(context.expected_positives))


def known_labels(context: SchemeContext) -> SchemeParts:
    """IU, IUN and BCE: the scheme's targets (observed; observed positives and true negatives; truth) decide."""
    return SchemeParts(KnownLabelLoss())


def known_labels_smoothed(context: SchemeContext) -> SchemeParts:
    return SchemeParts(KnownLabelLoss(smoothing=LABEL_SMOOTHING))
