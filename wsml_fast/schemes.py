"""From a scheme name to what training needs for it: the loss and the callbacks that go with it."""

from __future__ import annotations

from functools import partial

import numpy as np
from fastai.callback.core import Callback

from wsml_fast.atomic import write_text
from wsml_fast.config import LARGE_LOSS_SCHEMES, TrainConfig
from wsml_fast.losses import PartialLabelLoss, make_loss
from wsml_fast.runfolder import CORRECTIONS, Reporter, RunFolder
from wsml_fast.table import PartialLabelTable

EXPECTED_POSITIVE_SCHEMES = ("epr", "role")


def _expected_positives(config: TrainConfig, table: PartialLabelTable, say: Reporter) -> float | None:
    if config.scheme not in EXPECTED_POSITIVE_SCHEMES or config.expected_positives is not None:
        return config.expected_positives
    estimate = table.expected_positives()
    if estimate is None:
        from wsml_fast.errors import WsmlError

        raise WsmlError(f"--scheme {config.scheme} needs --expected-positives (positives per image); no truth.csv")
    say(f"note: --expected-positives not given: {estimate:.2f}, the mean positives per train image in truth.csv")
    return estimate


def scheme_parts(
    config: TrainConfig, table: PartialLabelTable, train_labels: np.ndarray, run: RunFolder, say: Reporter
) -> tuple[PartialLabelLoss, list[Callback]]:
    """The loss of `config.scheme` and the callbacks it needs (large-loss selection, ROLE's label estimates)."""
    expected = _expected_positives(config, table, say)
    rows = table.rows("train")
    truth = None if table.truth is None else table.truth[rows]
    images = [table.images[i] for i in rows]
    if config.scheme in LARGE_LOSS_SCHEMES:
        from wsml_fast.large_loss import LargeLossCallback

        callback = LargeLossCallback(
            config.scheme,
            config.delta_rel,
            train_labels,
            truth,
            images,
            table.classes,
            partial(write_text, run.file(CORRECTIONS)) if config.scheme == "llcp" else None,
        )
        return make_loss("an", len(table.classes)), [callback]
    if config.scheme == "role":
        from wsml_fast.role import RoleCallback

        return make_loss("an", len(table.classes)), [RoleCallback(train_labels, expected)]
    return make_loss(config.scheme, len(table.classes), expected), []
