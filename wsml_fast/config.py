"""The one typed configuration that recipes, CLI options and the run folder share.

Values are resolved in layers (defaults < recipe < command line) and each value remembers which layer set it,
so `config.yaml` in a run folder tells how the run came about and is enough to rerun it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from wsml_fast.errors import WsmlError

SCHEMES = ("an", "an-ls", "wan", "epr", "role", "iu", "iun", "bce", "bce-ls", "llr", "llct", "llcp")
LARGE_LOSS_SCHEMES = ("llr", "llct", "llcp")
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
    linear_epochs: int = 1  # the linear part of linear-init
    early_stop: bool = False  # stop when valid mAP falls more than 3 points below the best
    delta_rel: float | None = None  # large-loss schemes: Delta in percent (typical 0.1 to 0.5)
    expected_positives: float | None = None  # epr / role: expected positives per image
    track_memorization: bool = False
    img_size: int | None = None  # None: the backbone's default input size
    hflip: bool = True
    valid_fraction: float = 0.2  # held out of train when there are no valid rows
    seed: int = 0
    workers: int | None = None  # None: chosen from the CPU count
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (falls back, with a message, where it fails)
    map_convention: str = "skip"  # classes without positives: left out ("skip") or AP 0 ("paper")
    out: str | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def validate(self) -> TrainConfig:
        """Fail early, naming the option, on values no run could use."""
        choices = {
            "scheme": SCHEMES,
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
            if isinstance(value, float) and not math.isfinite(value):
                raise WsmlError(f"--{f.name.replace('_', '-')} must be a finite number (got {value})")
        positive = ("epochs", "bs", "lr", "head_lr_mult")
        for name in positive:
            if getattr(self, name) <= 0:
                raise WsmlError(f"--{name.replace('_', '-')} must be greater than 0 (got {getattr(self, name)})")
        if self.img_size is not None and self.img_size < 8:
            raise WsmlError(f"--img-size must be at least 8 pixels (got {self.img_size})")
        if not 0 < self.valid_fraction < 1:
            raise WsmlError(f"valid_fraction must be between 0 and 1 (got {self.valid_fraction})")
        if self.scheme in LARGE_LOSS_SCHEMES and (self.delta_rel is None or not 0 < self.delta_rel < 100):
            raise WsmlError(f"--scheme {self.scheme} needs --delta-rel, in percent (typical 0.1 to 0.5)")
        if self.workers is not None and self.workers < 0:
            raise WsmlError(f"--workers must be 0 or more (got {self.workers})")
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


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name != "sources"]


def apply_layer(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return `config` with `values` set on top, recording `source` for each; unknown keys are errors."""
    known = set(field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise WsmlError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
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
    return apply_layer(config, given, "cli").validate()
