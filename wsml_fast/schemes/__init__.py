"""The scheme registry: every training scheme's entry, collected from the family packages, and the one factory
that builds a scheme.

In the spirit of timm's model registry, every scheme is one `Scheme` entry (wsml_fast.schemes.declaration),
declared with its settings in its family's package (`wsml_fast/schemes/<family>/__init__.py`): its name, the
family whose paper it follows, a one-line description, the labels it trains on and what it needs, the function of
the family's `training` module that builds it, and the settings it reads (`Setting`: type, default, constraint,
help, search range). The declarations are plain data, so the command line lists them without importing torch; a
family's `training` module is imported only when one of its schemes is built. Adding a scheme to a family is one
entry (and its settings) in the family's package and its build function in the family's `training` module; a new
family is one more package, listed in `_PACKAGES`. The `train` options, config validation, the README table,
`wsml schemes --json` and `wsml tune` all read this registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsml_fast.errors import WsmlError
from wsml_fast.schemes import cole, em, gr, large_loss, role
from wsml_fast.schemes.declaration import Family, Scheme, Setting

if TYPE_CHECKING:  # the heavy types, for annotations only
    from collections.abc import Callable

    import torch
    from fastai.callback.core import Callback

    from wsml_fast.config import TrainConfig
    from wsml_fast.labelstore import LabelStore
    from wsml_fast.losses import PartialLabelLoss
    from wsml_fast.runfolder import Reporter, RunFolder
    from wsml_fast.table import PartialLabelTable

_PACKAGES = (cole, role, large_loss, em, gr)
FAMILIES: dict[str, Family] = {package.FAMILY.name: package.FAMILY for package in _PACKAGES}
SCHEMES: dict[str, Scheme] = {scheme.name: scheme for package in _PACKAGES for scheme in package.ENTRIES}

TARGETS = ("observed", "truth", "observed-positives-true-negatives")
DENSE_STATE_BUDGET = 4 * 2**30  # bytes of per-entry state a scheme may keep: 4 GiB


def _declared_settings() -> dict[str, Setting]:
    """Every scheme's settings, each once, in registry order (a name is one TrainConfig field and one option)."""
    settings: dict[str, Setting] = {}
    for scheme in SCHEMES.values():
        for setting in scheme.settings:
            if settings.setdefault(setting.name, setting) != setting:
                raise ValueError(f"scheme setting {setting.name!r} is declared twice, differently")
    return settings


SETTINGS = _declared_settings()


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEMES)


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise WsmlError(f"--scheme {name!r} is not one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def settings_of(config: TrainConfig) -> dict[str, Any]:
    """The scheme's own settings as this run resolved them (for the run's first lines)."""
    return {setting.name: getattr(config, setting.name) for setting in get_scheme(config.scheme).settings}


@dataclass
class SchemeContext:
    """What a family's `parts` may use to build a scheme for one run."""

    config: TrainConfig
    table: PartialLabelTable
    train_labels: LabelStore
    run: RunFolder
    say: Reporter
    expected_positives: float | None
    score_train: Callable[[torch.nn.Module], torch.Tensor]  # probabilities on every training input, unaugmented

    @property
    def total_epochs(self) -> int:
        return self.config.total_epochs


def training_labels(scheme: Scheme, table: PartialLabelTable) -> LabelStore:
    """The targets `scheme` trains on (1 / 0 / -1 per train row and class), refused, naming the scheme, where the
    data lacks what it needs: observed negatives for `iu`, a truth.csv for the full-label schemes."""
    from wsml_fast.labelstore import LabelStore

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


def _expected_positives(scheme: Scheme, config: TrainConfig, table: PartialLabelTable, say: Reporter):
    if not scheme.needs_expected_positives or config.expected_positives is not None:
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
    run: RunFolder,
    say: Reporter,
    score_train: Callable[[torch.nn.Module], torch.Tensor],
) -> tuple[PartialLabelLoss, list[Callback]]:
    """The loss of `config.scheme` and the callbacks it needs, from its family's module."""
    scheme = get_scheme(config.scheme)
    check_dense_state(scheme, train_labels.n_rows, train_labels.n_classes)
    expected = _expected_positives(scheme, config, table, say)
    context = SchemeContext(config, table, train_labels, run, say, expected, score_train)
    module = importlib.import_module(f"wsml_fast.schemes.{FAMILIES[scheme.family].module}.training")
    return module.parts(scheme, context)


def readers(setting: Setting) -> list[str]:
    """The schemes that read `setting`."""
    return [scheme.name for scheme in SCHEMES.values() if setting in scheme.settings]


def option_help(setting: Setting) -> str:
    """The command-line help of a scheme setting: who reads it, what it is, its default."""
    default = f" (default {_plain(setting.default)})" if setting.default is not None else ""
    return f"{', '.join(readers(setting))}: {setting.help}{default}."


def schemes_json() -> list[dict[str, Any]]:
    """Every scheme with its settings, as `wsml schemes --json` prints them."""
    return [
        {
            "name": scheme.name,
            "family": scheme.family,
            "paper": FAMILIES[scheme.family].paper,
            "description": scheme.description,
            "settings": [setting.to_json() for setting in scheme.settings],
        }
        for scheme in SCHEMES.values()
    ]


def markdown_table() -> str:
    """The README's table of schemes, made from the registry (a test keeps the two the same)."""
    lines = ["| scheme | what it does | method | own settings (default) |", "| --- | --- | --- | --- |"]
    for scheme in SCHEMES.values():
        settings = ", ".join(
            f"`{s.option}`" + (f" ({_plain(s.default)})" if s.default is not None else "") for s in scheme.settings
        )
        paper = FAMILIES[scheme.family].paper.split(" (")[0]
        lines.append(f"| `{scheme.name}` | {scheme.description} | {paper} | {settings or '-'} |")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
