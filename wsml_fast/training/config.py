"""The one typed configuration that recipes, CLI options and the run folder share.

Values are resolved in layers (defaults < recipe < command line) and each value remembers which layer set it,
so `config.yaml` in a run folder tells how the run came about and is enough to rerun it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from wsml_fast.core.errors import WsmlError
from wsml_fast.model.decisions import ThresholdRule
from wsml_fast.schemes import SETTINGS, get_scheme
from wsml_fast.schemes.declaration import Interval, Pair, Scheme, Setting, option_name

MODES = ("end-to-end", "linear", "linear-init")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("one-cycle", "constant")
MAP_CONVENTIONS = ("skip", "paper")
MIXES = ("logicmix",)


def _with_scheme_settings(after: str) -> Callable[[type], type]:
    """Give the class, before `dataclass` reads it, a field for every scheme setting its family declares, after
    the field `after`: default None, filled from the scheme's declaration by `with_scheme_defaults`."""

    def add_fields(cls: type) -> type:
        clash = sorted(set(SETTINGS) & set(cls.__annotations__))
        if clash:
            raise TypeError(f"scheme settings named like general settings: {', '.join(clash)}")
        annotations = {}
        for name, annotation in cls.__annotations__.items():
            annotations[name] = annotation
            if name == after:
                annotations |= {setting.name: _field_type(setting) for setting in SETTINGS.values()}
        for name in SETTINGS:
            setattr(cls, name, None)
        cls.__annotations__ = annotations
        return cls

    return add_fields


def _field_type(setting: Setting) -> str:
    """The TrainConfig annotation of a scheme setting (a pair is held as a list, as YAML reads it back)."""
    return f"{'list[float]' if setting.type == Pair else setting.type.__name__} | None"


@dataclass
@_with_scheme_settings(after="boost_lu")
class TrainConfig:
    """Everything a training run depends on."""

    dataset: str | None = None  # a prepared dataset under the data home (or "demo")
    data: str | None = None  # a dataset folder: images/, observed.csv[, truth.csv]
    csv: str | None = None  # a label CSV ...
    images: str | None = None  # ... and the folder its image paths are relative to
    scheme: str = "an"
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None  # local state dict for the backbone (.pth or .safetensors)
    epochs: int = 8
    bs: int = 32
    lr: float = 1e-3
    opt: str = "adam"
    schedule: str = "one-cycle"
    head_lr_mult: float = 1.0
    mode: str = "end-to-end"  # or "linear" (frozen backbone), "linear-init" (linear epochs, then end-to-end)
    linear_epochs: int = 1  # linear-init: epochs of the linear phase, before the `epochs` end-to-end ones
    linear_lr: float | None = None  # linear-init: the linear phase's learning rate (None: lr)
    linear_bs: int | None = None  # linear-init: the linear phase's batch size (None: bs)
    early_stop: bool = False  # stop when valid mAP falls more than `early_stop_drop` points below the best
    early_stop_drop: float = 3.0
    ema: float | None = None  # decay of an average of the weights, validated beside them (None or 0: no average)
    accumulate: int = 1  # batches whose gradients make one optimizer step
    boost_lu: float | None = None  # BoostLU's alpha: the class-activation head, positive activations x alpha
    # here, a field for each scheme setting (`delta_rel`, `gr_w`, ...), declared in its family's package
    track_memorization: bool = False
    img_size: int | None = None  # None: the backbone's default input size
    hflip: bool = True
    mix: str | None = None  # mix training images: "logicmix" (LogicMix, Chong et al. 2024; docs/mixing.md)
    mix_p: float = 0.5  # the chance that an image is replaced by a mix
    mix_n: int = 2  # images in a mix: the image and N-1 random partners from its batch
    valid_fraction: float = 0.2  # held out of train when there are no valid rows
    seed: int = 0
    workers: int | None = None  # None: chosen from the CPU count
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (falls back, with a message, where it fails)
    sync_bn: bool = False  # data-parallel runs: batch-norm statistics over the global batch (SyncBatchNorm)
    map_convention: str = "skip"  # classes without positives: left out ("skip") or AP 0 ("paper")
    thresholds: str = "f1"  # how the per-class decision thresholds are fitted on valid: f1, precision:P, fixed:T
    check_images: bool = True  # check every image before training (False: a bad one stops the run at its batch)
    log: list[str] = field(default_factory=list)  # trackers logged to besides the run folder: tensorboard, mlflow
    out: str | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: linear-init's linear phase comes before its `epochs` end-to-end ones."""
        return self.epochs + (self.linear_epochs if self.mode == "linear-init" else 0)

    @property
    def averages(self) -> bool:
        """Whether the run keeps an average of the weights: `--ema DECAY`, where None and 0 both mean none (0 is how
        the command line turns off a recipe's average)."""
        return bool(self.ema)

    def validate(self) -> TrainConfig:
        """Fail early, naming the option, on values no run could use."""
        scheme = get_scheme(self.scheme)
        choices = {
            "precision": PRECISIONS,
            "opt": OPTIMIZERS,
            "schedule": SCHEDULES,
            "mode": MODES,
            "map_convention": MAP_CONVENTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise WsmlError(f"{option_name(name)} {getattr(self, name)!r} is not one of: {', '.join(allowed)}")
        for f in fields(self):
            value = getattr(self, f.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    what = "finite numbers" if isinstance(value, list) else "a finite number"
                    raise WsmlError(f"{option_name(f.name)} must be {what} (got {value})")
        for name, interval in _LIMITS.items():
            interval.check(option_name(name), getattr(self, name), self)
        for setting in SETTINGS.values():  # any given value must be one its setting allows, read or not ...
            own = setting in scheme.settings  # ... and bounds that depend on the run only bind the scheme's own
            setting.check(getattr(self, setting.name), self if own else None)
        ThresholdRule.parse(self.thresholds)
        self._check_mix(scheme)
        self._check_trackers()
        if self.boost_lu is not None and self.mode != "end-to-end":
            raise WsmlError(
                f"--boost-lu needs --mode end-to-end: the {self.mode} mode trains on cached pooled features, and "
                "BoostLU's head needs the whole feature map"
            )
        if self.valid_fraction is not None and not 0 < self.valid_fraction < 1:
            raise WsmlError(f"valid_fraction must be between 0 and 1 (got {self.valid_fraction})")
        return self

    def _check_mix(self, scheme: Scheme) -> None:
        """A known mix, on images, for a scheme that takes mixed images (the registry's `Scheme.mixing` says)."""
        if self.mix is None:
            return
        if self.mix not in MIXES:
            raise WsmlError(f"--mix {self.mix!r} is not one of: {', '.join(MIXES)}")
        if scheme.mixing.refused:
            raise WsmlError(f"--mix {self.mix} cannot train --scheme {scheme.name}: {scheme.mixing.means}")
        if self.mode == "linear":
            raise WsmlError(
                f"--mix {self.mix} mixes images, and --mode linear trains on cached features (the mean of two images' "
                "features is not the features of their mean); use end-to-end or linear-init (it mixes in its "
                "end-to-end stage)"
            )

    def _check_trackers(self) -> None:
        """Known trackers whose libraries are installed. (Imported here: the trackers import the run folder, which
        imports this module.)"""
        from wsml_fast.training.trackers import tracker_class

        if not isinstance(self.log, list) or not all(isinstance(name, str) for name in self.log):
            raise WsmlError(f"log: give a list of tracker names, such as `log: [tensorboard]` (got {self.log})")
        for name in self.log:
            tracker_class(name)

    def values(self) -> dict[str, Any]:
        """The settings alone (without where they came from)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}

    def to_yaml(self) -> str:
        return yaml.safe_dump({"config": self.values(), "sources": dict(self.sources)}, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        try:
            document = yaml.safe_load(path.read_text())
            values = document["config"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise WsmlError(f"{path}: not a wsml config file ({exc.__class__.__name__})") from None
        config = apply_layer(cls(), values, str(path))
        config.sources = dict(document.get("sources") or {})
        return config


_LIMITS = {  # the general settings' allowed values (the schemes' settings declare their own)
    "epochs": Interval(low=1),
    "bs": Interval(low=1),
    "lr": Interval(low=0, low_inclusive=False),
    "head_lr_mult": Interval(low=0, low_inclusive=False),
    "linear_epochs": Interval(low=0),
    "linear_lr": Interval(low=0, low_inclusive=False),
    "linear_bs": Interval(low=1),
    "early_stop_drop": Interval(low=0),
    "ema": Interval(low=0, high=1, high_inclusive=False),
    "accumulate": Interval(low=1),
    "boost_lu": Interval(low=1),
    "img_size": Interval(low=8),
    "workers": Interval(low=0),
    "mix_p": Interval(low=0, high=1, low_inclusive=False),
    "mix_n": Interval(low=2, high=3),
}


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name != "sources"]


def apply_layer(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return `config` with `values` set on top, recording `source` for each; unknown keys are errors."""
    known = set(field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise WsmlError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # pairs from the CLI
    hints = typing.get_type_hints(TrainConfig)
    values = {n: v if n in SETTINGS else _typed(source, n, v, hints[n]) for n, v in values.items()}
    updated = dataclasses.replace(config, **values)
    updated.sources = {**config.sources, **{name: source for name in values}}
    return updated


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a text"}


def _typed(source: str, name: str, value: Any, hint: Any) -> Any:
    """`value` as its general setting holds it, or one line naming the layer, the setting and the type it needs (a
    scheme's settings check their own types in `Setting.check`). YAML reads
    `1e-3` as text (its numbers need a dot: `1.0e-3`), so text that reads as a number is one where one is due."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if any(typing.get_origin(kind) for kind in allowed):
        return value  # lists (GR's pairs, trackers) are checked by their settings, which say what they take
    if float in allowed and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not any(_fits(value, kind) for kind in allowed):
        needed = " or ".join(_kind(kind) for kind in allowed)
        raise WsmlError(f"{source}: {name}: {value!r} is not {needed}")
    return value


def _fits(value: Any, kind: type) -> bool:
    """Whether `value` has the type `kind` (an integer is a number; true and false are neither)."""
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def _kind(kind: type) -> str:
    return "null" if kind is type(None) else _KINDS.get(kind, kind.__name__)


def resolve(
    recipe: dict[str, Any] | None,
    recipe_name: str | None,
    cli: dict[str, Any],
    implied: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults (with `implied` values), then the recipe, then the command-line options that are not None."""
    config = TrainConfig(**(implied or {}))
    config.sources = {name: "default" for name in field_names()}
    if recipe:
        config = apply_layer(config, recipe, f"recipe:{recipe_name}")
    given = {k: v for k, v in cli.items() if v is not None}
    return with_scheme_defaults(apply_layer(config, given, "cli")).validate()


def with_scheme_defaults(config: TrainConfig) -> TrainConfig:
    """Fill the scheme's own settings that no layer gave from their declarations (source `scheme:NAME`)."""
    scheme = get_scheme(config.scheme)
    unset = {
        s.name: s.config_default for s in scheme.settings if s.default is not None and getattr(config, s.name) is None
    }
    return apply_layer(config, unset, f"scheme:{scheme.name}") if unset else config
