"""The scheme registry: what each training scheme is, in one entry, and the one factory that builds it.

In the spirit of timm's model registry, every scheme is one `Scheme` entry: its name, the family whose paper and
settings it follows, a one-line description, the labels it trains on and what it needs, the settings it reads
(with their defaults), the ranges `wsml tune` searches, and the function of its family's `training` module that
builds it (`build`, called by `schemes.build`). The entries are plain data, so the command line lists them
without importing torch; a family module is imported only when one of its schemes is built. Adding a scheme is
one build function in its family's `training` module plus one entry here. The CLI help, config validation, the
README table, `benchmarks/schemes.py` and `wsml tune` all read this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wsml_fast.errors import WsmlError

if TYPE_CHECKING:  # for annotations only
    from wsml_fast.config import TrainConfig


@dataclass(frozen=True)
class Range:
    """A search range for `wsml tune`: uniform, or log-uniform, over [low, high] (integers if `integer`)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    """A search over listed values (for settings that come in published sets)."""

    values: tuple


@dataclass(frozen=True)
class Family:
    """Whose method a scheme is: the paper, and the module that implements its schemes."""

    paper: str
    module: str


FAMILIES = {
    "cole": Family("Cole et al., CVPR 2021 (Multi-Label Learning from Single Positive Labels)", "cole"),
    "role": Family("Cole et al., CVPR 2021 (ROLE)", "role"),
    "large-loss": Family("Kim et al., CVPR 2022 (Large Loss Matters)", "large_loss"),
    "em": Family("Zhou et al., ECCV 2022 (Acknowledging the Unknown: EM and APL)", "em"),
    "gr": Family("Chen et al., IJCAI 2024 (GR loss)", "gr"),
}
RECIPE_FAMILY = {"role": "cole"}  # ROLE has its own module but Cole et al.'s settings

TARGETS = ("observed", "truth", "observed-positives-true-negatives")
DELTA = {"settings": {"delta_rel": 0.2}, "search": {"delta_rel": Range(0.05, 1.0, log=True)}}  # Delta in percent


DENSE_STATE_BUDGET = 4 * 2**30  # bytes of per-entry state a scheme may keep: 4 GiB


@dataclass(frozen=True)
class DenseState:
    """State a scheme keeps for every training entry (images x classes): what it is and its bytes per entry."""

    what: str
    bytes_per_entry: int


@dataclass(frozen=True)
class Scheme:
    """One training scheme. `settings` maps the TrainConfig fields it reads to their defaults (None: required,
    or estimated where the scheme says how); `dense_state` is the per-entry state it keeps, if any (memory that
    grows with images x classes: refused above DENSE_STATE_BUDGET)."""

    name: str
    family: str
    description: str
    build: str  # the function of the family's `training` module that builds the scheme (from a SchemeContext)
    targets: str = "observed"
    needs_observed_negatives: bool = False
    needs_expected_positives: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Range | Choice] = field(default_factory=dict)
    dense_state: DenseState | None = None

    @property
    def recipe_family(self) -> str:
        return RECIPE_FAMILY.get(self.family, self.family)


GR_DEFAULTS = {  # yan4xi1/GRLoss config.py:93-102: (start, end) of each schedule, and the powers (q2, q3)
    "gr_w": [0.0, 2.0],
    "gr_b": [-2.0, -2.0],
    "gr_mu": [0.5, 0.8],
    "gr_sigma": [2.0, 0.5],
    "gr_q": [0.01, 1.0],
}

_ENTRIES = (
    Scheme("an", "cole", "assume negative: unobserved entries are negatives", build="assume_negative"),
    Scheme(
        "an-ls",
        "cole",
        "`an` with label smoothing 0.1 (targets 0.9 / 0.1, as the Cole et al. code does)",
        build="assume_negative_smoothed",
    ),
    Scheme(
        "wan",
        "cole",
        "`an` with the negative term of unobserved entries weighted 1/(C-1)",
        build="weak_assume_negative",
    ),
    Scheme(
        "epr",
        "cole",
        "observed positives only, plus (batch mean of the expected count - k)^2 / C^2; k from "
        "`--expected-positives` (estimated from `truth.csv` when absent, and said so)",
        build="expected_positive",
        needs_expected_positives=True,
        settings={"expected_positives": None},
    ),
    Scheme(
        "role",
        "role",
        "jointly learns a label-estimate matrix (its own lr: 10 x `--lr`) with the classifier; its estimates "
        "are saved with the weights",
        build="role",
        needs_expected_positives=True,
        settings={"expected_positives": None},
        # estimate logits, their gradient and Adam's two moments: 4 float32 an entry
        dense_state=DenseState("a label estimate per training entry, with its gradient and Adam moments", 16),
    ),
    Scheme(
        "iu",
        "cole",
        "observed positives and observed negatives only (refused, with a reason, when there are no observed negatives)",
        build="known_labels",
        needs_observed_negatives=True,
    ),
    Scheme(
        "iun",
        "cole",
        "observed positives and every true negative from `truth.csv` (an oracle baseline)",
        build="known_labels",
        targets="observed-positives-true-negatives",
    ),
    Scheme("bce", "cole", "full labels from `truth.csv` (the upper bound)", build="known_labels", targets="truth"),
    Scheme("bce-ls", "cole", "`bce` with label smoothing 0.1", build="known_labels_smoothed", targets="truth"),
    Scheme(
        "llr",
        "large-loss",
        "Large Loss Rejection: from epoch 2 on, the k largest AN losses among unobserved entries of each batch "
        "count 0; k = ceil(B C (t-1) Delta / 100)",
        build="rejection",
        **DELTA,
    ),
    Scheme(
        "llct",
        "large-loss",
        "Large Loss Correction (temporary): those entries are trained as positives for this step",
        build="temporary_correction",
        **DELTA,
    ),
    Scheme(
        "llcp",
        "large-loss",
        "Large Loss Correction (permanent): k = ceil(B C Delta / 100) entries a batch become observed positives "
        "for the rest of training; listed in `corrected_labels.csv` and checkpointed",
        build="permanent_correction",
        **DELTA,
    ),
    Scheme(
        "em",
        "em",
        "entropy maximisation: observed positives -log p, unobserved entries -alpha H(p) (`--em-alpha`)",
        build="entropy_maximization",
        settings={"em_alpha": 0.1},
        search={"em_alpha": Range(0.005, 0.5, log=True)},
    ),
    Scheme(
        "em-apl",
        "em",
        "`em` plus asymmetric pseudo-labels: after each epoch from `--apl-warmup` on, the least likely "
        "unobserved entries of each class get the soft negative label p, weighted `--em-beta`; listed in "
        "`pseudo_labels.csv` and checkpointed",
        build="entropy_maximization_apl",
        settings={"em_alpha": 0.1, "em_beta": 0.9, "apl_warmup": 5},
        search={"em_alpha": Range(0.005, 0.5, log=True), "em_beta": Range(0.01, 1.0, log=True)},
        # targets, pass probabilities and pseudo-label values (float32), flag (bool), epoch (int16), the pass's
        # selection (an int64 sort index and a bool per entry)
        dense_state=DenseState("the pass's scores and a pseudo-label flag, value and epoch per training entry", 24),
    ),
    Scheme(
        "gr",
        "gr",
        "generalized robust loss: unobserved entries get a soft pseudo-label k = sigmoid(w p + b) and a weight "
        "v = exp(-(p - mu)^2 / 2 sigma^2) on generalized cross-entropies; w, b, mu, sigma follow linear "
        "schedules over the epochs",
        build="generalized_robust",
        settings=dict(GR_DEFAULTS),
        search={"gr_w": Choice(([0.0, 2.0], [0.0, 10.0])), "gr_b": Choice(([-2.0, -2.0], [-2.0, -8.0]))},
    ),
)
SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in _ENTRIES}


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEMES)


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise WsmlError(f"--scheme {name!r} is not one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def settings_of(config: TrainConfig) -> dict[str, Any]:
    """The scheme's own settings as this run resolved them (for the run's first lines)."""
    return {name: getattr(config, name) for name in get_scheme(config.scheme).settings}


def markdown_table() -> str:
    """The README's table of schemes, made from the registry (a test keeps the two the same)."""
    lines = ["| scheme | what it does | method | own settings (default) |", "| --- | --- | --- | --- |"]
    for scheme in SCHEMES.values():
        settings = ", ".join(
            f"`--{k.replace('_', '-')}`" + (f" ({_plain(v)})" if v is not None else "")
            for k, v in scheme.settings.items()
        )
        paper = FAMILIES[scheme.family].paper.split(" (")[0]
        lines.append(f"| `{scheme.name}` | {scheme.description} | {paper} | {settings or '-'} |")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return " ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
