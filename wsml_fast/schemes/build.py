"""Building a registered scheme for one run: its training labels, its memory check, and the parts its family makes.

The registry (`wsml_fast.schemes`) is plain data; this module imports a family's `training` module and calls the
function its entry names (`Scheme.build`) with a `SchemeContext`, so no family dispatches on the scheme's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wsml_fast.core.errors import WsmlError
from wsml_fast.schemes import DENSE_STATE_BUDGET, FAMILIES, SCHEMES, Scheme, get_scheme

if TYPE_CHECKING:  # the heavy types, for annotations only
    import torch
    from fastai.callback.core import Callback

    from wsml_fast.core.report import Reporter
    from wsml_fast.data.labelstore import LabelStore
    from wsml_fast.data.table import PartialLabelTable
    from wsml_fast.schemes.losses import PartialLabelLoss
    from wsml_fast.training.config import TrainConfig


@dataclass
class SchemeContext:
    """What a family's build function may use to build a scheme for one run."""

    scheme: Scheme
    config: TrainConfig
    table: PartialLabelTable
    train_labels: LabelStore
    write_run_file: Callable[[str, str], None] | None  # (file name, text) into the run folder; None: not here
    say: Reporter
    expected_positives: float | None
    score_train: Callable[[torch.nn.Module], torch.Tensor]  # probabilities on every training input, unaugmented

    @property
    def total_epochs(self) -> int:
        return self.config.total_epochs


@dataclass
class SchemeParts:
    """What a scheme trains with: its training loss, the callbacks that keep its state and feed that loss, and
    the loss validation reports (None: the training loss itself). The Learner holds the training loss while it
    trains and the evaluation loss otherwise."""

    loss: torch.nn.Module
    callbacks: list[Callback] = field(default_factory=list)
    evaluation_loss: PartialLabelLoss | None = None


def training_labels(scheme: Scheme, table: PartialLabelTable) -> LabelStore:
    """The targets `scheme` trains on (1 / 0 / -1 per train row and class), refused, naming the scheme, where the
    data lacks what it needs: observed negatives for `iu`, a truth.csv for the full-label schemes."""
    from wsml_fast.data.labelstore import LabelStore

    observed = table.observed_of("train")
    if scheme.needs_observed_negatives and not observed.count(0, axis=0).any():
        raise WsmlError(
            f"--scheme {scheme.name} trains on observed negatives, and {table.source.observed_csv} has none in "
            "train; use an, wan, epr, role or a large-loss scheme"
        )
    if scheme.targets == "observed":
        return observed
    truth = table.train_truth()
    if truth is None:
        raise WsmlError(
            f"--scheme {scheme.name} needs full labels but {table.source.observed_csv.parent} has no truth.csv; "
            "use a partial-label scheme such as an"
        )
    if scheme.targets == "truth":
        return truth
    # observed positives and every true negative: a true positive keeps its observed value (1, or -1 unobserved)
    rows, cols = truth.entries(1)
    return LabelStore.from_entries(*truth.shape, rows, cols, observed.lookup(rows, cols), fill=0)


def check_dense_state(scheme: Scheme, n_rows: int, n_classes: int) -> None:
    """Refuse, naming the schemes that scale, a scheme whose per-entry state would pass DENSE_STATE_BUDGET."""
    if scheme.dense_state is None:
        return
    need = n_rows * n_classes * scheme.dense_state.bytes_per_entry
    if need > DENSE_STATE_BUDGET:
        scaling = ", ".join(name for name, s in SCHEMES.items() if s.dense_state is None)
        raise WsmlError(
            f"--scheme {scheme.name} keeps {scheme.dense_state.what}: {need / 2**30:.1f} GiB for {n_rows:,} train "
            f"images x {n_classes:,} classes, over wsml's budget of {DENSE_STATE_BUDGET / 2**30:g} GiB; these "
            f"schemes keep memory that grows with the labels only: {scaling}"
        )


def expected_positives(scheme: Scheme, config: TrainConfig, table: PartialLabelTable, say: Reporter) -> float | None:
    """The run's expected positives per image where the scheme needs them: given, or estimated from truth.csv."""
    reads_them = any(setting.name == "expected_positives" for setting in scheme.settings)
    if not reads_them or config.expected_positives is not None:
        return config.expected_positives
    estimate = table.expected_positives()
    if estimate is None:
        raise WsmlError(f"--scheme {scheme.name} needs --expected-positives (positives per image); no truth.csv")
    say(f"note: --expected-positives not given: {estimate:.2f}, the mean positives per train image in truth.csv")
    return estimate


def scheme_parts(
    config: TrainConfig,
    table: PartialLabelTable,
    train_labels: LabelStore,
    write_run_file: Callable[[str, str], None] | None,
    say: Reporter,
    score_train: Callable[[torch.nn.Module], torch.Tensor],
) -> SchemeParts:
    """The parts of `config.scheme`, from the function its entry names in its family's `training` module.
    `write_run_file` writes a file into the run folder (None in a process that does not write it)."""
    scheme = get_scheme(config.scheme)
    check_dense_state(scheme, train_labels.n_rows, train_labels.n_classes)
    expected = expected_positives(scheme, config, table, say)
    context = SchemeContext(scheme, config, table, train_labels, write_run_file, say, expected, score_train)
    module = importlib.import_module(f"wsml_fast.schemes.{FAMILIES[scheme.family].module}.training")
    return getattr(module, scheme.build)(context)
