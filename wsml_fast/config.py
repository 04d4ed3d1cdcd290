"""The one typed configuration that recipes, CLI options and the run folder share.

Values are resolved in layers (defaults < recipe < command line) and each value remembers which layer set it,
so `config.yaml` in a run folder tells how the run came about and is enough to rerun it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from wsml_fast.errors import WsmlError

MODES = ("end-to-end", "linear", "linear-init")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("one-cycle", "constant")
MAP_CONVENTIONS = ("skip", "paper")


@dataclass
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
    boost_lu: float | None = None  # BoostLU's alpha: the class-activation head, positive activations x alpha
    # the schemes' own settings (defaults: their registry entry, wsml_fast.schemes)
    delta_rel: float | None = None  # large-loss schemes: Delta in percent (typical 0.1 to 0.5)
    expected_positives: float | None = None  # epr / role: expected positives per image
    em_alpha: float | None = None  # em, em-apl: weight of the entropy term
    em_beta: float | None = None  # em-apl: weight of the pseudo-labelled entries' loss
    apl_warmup: int | None = None  # em-apl: pseudo-labels after every epoch from this one on
    gr_w: list[float] | None = None  # gr: (start, end) of each schedule ...
    gr_b: list[float] | None = None
    gr_mu: list[float] | None = None
    gr_sigma: list[float] | None = None
    gr_q: list[float] | None = None  # ... and the powers (q2, q3)
    track_memorization: bool = False
    img_size: int | None = None  # None: the backbone's default input size
    hflip: bool = True
    valid_fraction: float = 0.2  # held out of train when there are no valid rows
    seed: int = 0
    workers: int | None = None  # None: chosen from the CPU count
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (falls back, with a message, where it fails)
    sync_bn: bool = False  # data-parallel runs: batch-norm statistics over the global batch (SyncBatchNorm)
    map_convention: str = "skip"  # classes without positives: left out ("skip") or AP 0 ("paper")
    check_images: bool = True  # check every image before training (False: a bad one stops the run at its batch)
    out: str | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: linear-init's linear phase comes before its `epochs` end-to-end ones."""
        return self.epochs + (self.linear_epochs if self.mode == "linear-init" else 0)

    def validate(self) -> TrainConfig:
        """Fail early, naming the option, on values no run could use."""
        from wsml_fast.schemes import get_scheme

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
                option = name.replace("_", "-")
                raise WsmlError(f"--{option} {getattr(self, name)!r} is not one of: {', '.join(allowed)}")
        for f in fields(self):
            value = getattr(self, f.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    what = "finite numbers" if isinstance(value, list) else "a finite number"
                    raise WsmlError(f"{_option(f.name)} must be {what} (got {value})")
        for name, low, low_included in _LIMITS:
            value = getattr(self, name)
            if value is not None and (value < low or (value == low and not low_included)):
                relation = "at least" if low_included else "greater than"
                raise WsmlError(f"{_option(name)} must be {relation} {low} (got {value})")
        if self.delta_rel is not None and self.delta_rel >= 100:
            raise WsmlError(f"--delta-rel is Delta in percent, below 100 (got {self.delta_rel}; typical 0.1 to 0.5)")
        for name in ("gr_w", "gr_b", "gr_mu", "gr_sigma", "gr_q"):
            value = getattr(self, name)
            if value is not None and len(value) != 2:
                raise WsmlError(f"{_option(name)} takes two numbers, a start and an end (got {value})")
        if self.gr_sigma is not None and min(self.gr_sigma) <= 0 or self.gr_q is not None and min(self.gr_q) <= 0:
            raise WsmlError("--gr-sigma and --gr-q must be greater than 0")
        if self.boost_lu is not None and self.mode != "end-to-end":
            raise WsmlError(
                f"--boost-lu needs --mode end-to-end: the {self.mode} mode trains on cached pooled features, and "
                "BoostLU's head needs the whole feature map"
            )
        if "apl_warmup" in scheme.settings and self.apl_warmup is not None and self.apl_warmup >= self.total_epochs:
            raise WsmlError(
                f"--apl-warmup {self.apl_warmup}: APL pseudo-labels after the epochs from the warm-up on, before the "
                f"last; with {self.total_epochs} epochs it would never run (use a smaller --apl-warmup)"
            )
        for name, default in scheme.settings.items():
            if getattr(self, name) is None and default is None and name != "expected_positives":
                raise WsmlError(f"--scheme {self.scheme} needs {_option(name)}")
        if self.valid_fraction is not None and not 0 < self.valid_fraction < 1:
            raise WsmlError(f"valid_fraction must be between 0 and 1 (got {self.valid_fraction})")
        return self

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


_LIMITS = (  # (field, lowest value, whether the lowest value itself is allowed)
    ("epochs", 1, True),
    ("bs", 1, True),
    ("lr", 0, False),
    ("head_lr_mult", 0, False),
    ("linear_epochs", 0, True),
    ("linear_lr", 0, False),
    ("linear_bs", 1, True),
    ("early_stop_drop", 0, True),
    ("boost_lu", 1, True),
    ("delta_rel", 0, False),
    ("expected_positives", 0, False),
    ("em_alpha", 0, False),
    ("em_beta", 0, True),
    ("apl_warmup", 1, True),
    ("img_size", 8, True),
    ("workers", 0, True),
)


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name != "sources"]


def apply_layer(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return `config` with `values` set on top, recording `source` for each; unknown keys are errors."""
    known = set(field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise WsmlError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # pairs from the CLI
    updated = dataclasses.replace(config, **values)
    updated.sources = {**config.sources, **{name: source for name in values}}
    return updated


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
    """Fill the scheme's own settings that no layer gave from its registry entry (source `scheme:NAME`)."""
    from wsml_fast.schemes import get_scheme

    scheme = get_scheme(config.scheme)
    unset = {k: copy.deepcopy(v) for k, v in scheme.settings.items() if v is not None and getattr(config, k) is None}
    return apply_layer(config, unset, f"scheme:{scheme.name}") if unset else config
