"""What a scheme family declares about itself: its schemes and their settings, as plain data.

In the spirit of scikit-learn's parameter constraints, every setting a scheme reads is one `Setting`: its name
(the TrainConfig field; dashed, the command-line option), its type, its default, the values it allows, its help
and the range `wsml tune` searches. Config validation, the `train` options, `wsml schemes --json`, the docs'
table and tune's search space are all made from these declarations. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsml_fast.core.errors import WsmlError

Pair = tuple[float, float]  # the type of a setting of two numbers (GR's schedules: a start and an end)


def option_name(name: str) -> str:
    """The command-line option of a TrainConfig field: `delta_rel` -> `--delta-rel`."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Interval:
    """The numbers a setting allows (each number, for a pair), bounds included or not; None: unbounded. `high` may
    name an attribute of the run's TrainConfig (such as "total_epochs"), read when it is checked. A bound may have
    an error text of its own (placeholders {option}, {value}, {bound})."""

    low: float | None = None
    high: float | str | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    low_message: str | None = None
    high_message: str | None = None

    def check(self, option: str, value: Any, run: Any) -> None:
        """Raise WsmlError, naming the option, where `value` (None: not set) lies outside; a bound that names an
        attribute of the run is left out when `run` is None."""
        if value is None:
            return
        if isinstance(self.high, str) and run is None:  # a bound read from the run, checked without one
            high = None
        else:
            high = getattr(run, self.high) if isinstance(self.high, str) else self.high
        for number in value if isinstance(value, list | tuple) else [value]:
            if self.low is not None and (number < self.low or (number == self.low and not self.low_inclusive)):
                relation = "at least" if self.low_inclusive else "greater than"
                raise WsmlError(self._text(self.low_message, f"must be {relation}", option, value, self.low))
            if high is not None and (number > high or (number == high and not self.high_inclusive)):
                relation = "at most" if self.high_inclusive else "below"
                raise WsmlError(self._text(self.high_message, f"must be {relation}", option, value, high))

    @staticmethod
    def _text(message: str | None, relation: str, option: str, value: Any, bound: Any) -> str:
        template = message or "{option} " + relation + " {bound} (got {value})"
        return template.format(option=option, value=value, bound=bound)

    def to_json(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "low_inclusive": self.low_inclusive,
            "high_inclusive": self.high_inclusive,
        }


@dataclass(frozen=True)
class Range:
    """A search range for `wsml tune`: uniform, or log-uniform, over [low, high] (integers if `integer`)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer}


@dataclass(frozen=True)
class Choice:
    """A search over listed values (for settings that come in published sets)."""

    values: tuple

    def to_json(self) -> dict[str, Any]:
        return {"choices": [_plain(value) for value in self.values]}


@dataclass(frozen=True)
class Setting:
    """One setting a scheme reads. `default` None: no default (or one the scheme estimates, as its help says)."""

    name: str
    type: type  # float, int or Pair
    default: Any
    help: str  # what it is, after the names of the schemes that read it (added where it is shown)
    constraint: Interval | None = None
    search: Range | Choice | None = None

    @property
    def option(self) -> str:
        return option_name(self.name)

    @property
    def config_default(self) -> Any:
        """The default as a TrainConfig holds it: a pair as a (new) list."""
        return _plain(self.default)

    def check(self, value: Any, run: Any) -> None:
        """Raise WsmlError, naming the option, where `value` (None: not set) is not one this setting allows."""
        if value is None:
            return
        if self.type == Pair and (not isinstance(value, list | tuple) or len(value) != 2):
            raise WsmlError(f"{self.option} takes two numbers, a start and an end (got {value})")
        whole = self.type is int
        for number in value if self.type == Pair else [value]:  # a recipe's YAML may hold anything
            if isinstance(number, bool) or not isinstance(number, int if whole else int | float):
                raise WsmlError(f"{self.option} must be {'a whole number' if whole else 'a number'} (got {value!r})")
        if self.constraint is not None:
            self.constraint.check(self.option, value, run)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "option": self.option,
            "type": "float pair" if self.type == Pair else self.type.__name__,
            "default": self.config_default,
            "help": self.help,
            "constraint": None if self.constraint is None else self.constraint.to_json(),
            "search": None if self.search is None else self.search.to_json(),
        }


@dataclass(frozen=True)
class Family:
    """Whose method a scheme is: the paper, and the package under wsml_fast.schemes that implements its schemes.
    `recipes_of` names the family whose recipe settings its schemes take, where not its own."""

    name: str
    paper: str
    module: str
    recipes_of: str | None = None

    @property
    def recipe_family(self) -> str:
        return self.recipes_of or self.name


@dataclass(frozen=True)
class DenseState:
    """State a scheme keeps for every training entry (images x classes): what it is and its bytes per entry."""

    what: str
    bytes_per_entry: int


@dataclass(frozen=True)
class Mixing:
    """How a scheme takes mixed images (`--mix`): what a mix means for it beyond its targets (which the mixing
    makes), or, `refused`, why it cannot train on them."""

    means: str
    refused: bool = False


TARGETS_ONLY = Mixing("its loss reads the batch's targets alone: a mix trains on its mixed targets")


@dataclass(frozen=True)
class Scheme:
    """One training scheme, in the spirit of timm's registry entries. `build` names the function of its family's
    `training` module that builds it; `settings` are the settings it reads; `dense_state` is the per-entry state
    it keeps, if any (memory that grows with images x classes: refused above the registry's budget); `mixing` says
    what a mixed image means for it, or refuses `--mix`."""

    name: str
    family: str
    description: str
    build: str
    targets: str = "observed"
    needs_observed_negatives: bool = False
    settings: tuple[Setting, ...] = ()
    dense_state: DenseState | None = None
    mixing: Mixing = TARGETS_ONLY

    @property
    def search(self) -> dict[str, Range | Choice]:
        """The ranges `wsml tune` searches for this scheme's own settings."""
        return {setting.name: setting.search for setting in self.settings if setting.search is not None}


def _plain(value: Any) -> Any:
    """A declared value as configs, YAML and JSON hold it: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
