"""The model file (`model.pth`): trained weights with everything needed to rebuild and use them.

One file, so that a tagger can leave its run folder: the backbone (a timm name) and head, the input size, the
normalization, the class names, the per-class decision thresholds (and the rule that fitted them), a summary of
how the model was trained and the wsml version that wrote it. `wsml eval`, `predict`, `calibrate`, `export` and
`wsml_fast.load_model` read it; nothing else of the run folder is needed. The schemes' training state (stored
corrections, label estimates) plays no part in scoring an image, so it stays in the run folder.

It is a `torch.save` of plain containers (no pickled classes), read with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from wsml_fast.core.atomic import save_torch
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.version import WSML_VERSION
from wsml_fast.model.classifier import Classifier, create_body

FORMAT = "wsml-model"
LAYOUT = 1  # the version of this file's layout: raised when a reader of the old one could not read the new
UNFITTED = "unfitted"  # the threshold rule of a model whose thresholds were never fitted (0.5 each)


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild the classifier and name its outputs."""

    backbone: str  # a timm model name
    classes: tuple[str, ...]
    img_size: int  # square input, pixels
    mean: tuple[float, ...]  # the backbone's normalization, on 0-1 pixel values
    std: tuple[float, ...]
    boost_lu: float | None = None  # BoostLU's alpha, when the model has that head

    @property
    def head(self) -> str:
        return "linear" if self.boost_lu is None else f"boost-lu {self.boost_lu:g}"

    def build(self) -> Classifier:
        """The classifier with random weights (the caller loads the trained ones), built once from timm."""
        body, _ = create_body(self.backbone, False, None, self.img_size)
        return Classifier(body, len(self.classes), self.mean, self.std, self.boost_lu)


@dataclass
class ModelFile:
    """A trained model: its spec, weights, decision thresholds and where it came from."""

    spec: ModelSpec
    weights: dict[str, torch.Tensor]
    thresholds: list[float]
    threshold_rule: str = UNFITTED
    training: dict[str, Any] = field(default_factory=dict)  # scheme, dataset, best epoch, valid mAP, ...
    version: str = WSML_VERSION

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.spec.classes):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.spec.classes)} classes")

    @classmethod
    def unfitted(cls, spec: ModelSpec, weights: dict[str, torch.Tensor], training: dict[str, Any]) -> ModelFile:
        """Weights whose thresholds are not fitted yet: 0.5 for every class."""
        return cls(spec, weights, [0.5] * len(spec.classes), UNFITTED, training)

    def with_thresholds(self, thresholds: list[float], rule: str) -> ModelFile:
        return replace(self, thresholds=[float(t) for t in thresholds], threshold_rule=rule, version=WSML_VERSION)

    def classifier(self, device: torch.device | str = "cpu") -> Classifier:
        """The trained classifier on `device`, in eval mode."""
        model = self.spec.build()
        try:
            model.load_state_dict(self.weights)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).splitlines()[0][:160]
            raise WsmlError(f"the model file's weights do not fit its {self.spec.backbone} ({first})") from None
        return model.to(device).eval()

    def save(self, path: Path) -> None:
        """Write atomically (a kill leaves the previous file)."""
        spec = {**asdict(self.spec), "classes": list(self.spec.classes)}
        spec["mean"], spec["std"] = list(self.spec.mean), list(self.spec.std)
        payload = {
            "format": FORMAT,
            "layout": LAYOUT,
            "wsml_version": self.version,
            "spec": spec,
            "thresholds": list(self.thresholds),
            "threshold_rule": self.threshold_rule,
            "training": self.training,
            "weights": self.weights,
        }
        save_torch(path, payload)

    @classmethod
    def load(cls, path: Path) -> ModelFile:
        """Read a model file; anything else (bare weights, a checkpoint, another program's file) is refused in
        one line that says what it is and what to do."""
        path = Path(path)
        if not path.is_file():
            raise WsmlError(f"{path}: model file not found")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, text, or a pickle of classes: all unreadable here
            raise WsmlError(
                f"{path}: not a readable model file ({exc.__class__.__name__}); pass the model.pth of a wsml run"
            ) from None
        _check_layout(path, payload)
        spec = payload["spec"]
        return cls(
            ModelSpec(
                backbone=spec["backbone"],
                classes=tuple(spec["classes"]),
                img_size=int(spec["img_size"]),
                mean=tuple(spec["mean"]),
                std=tuple(spec["std"]),
                boost_lu=spec.get("boost_lu"),
            ),
            payload["weights"],
            [float(t) for t in payload["thresholds"]],
            payload["threshold_rule"],
            payload.get("training", {}),
            payload.get("wsml_version", "unknown"),
        )


def _check_layout(path: Path, payload: object) -> None:
    """Say what a file that is not a wsml model file of this layout is, and what to do with it."""
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("layout") == LAYOUT:
            return
        raise WsmlError(
            f"{path}: a wsml model file of layout {payload.get('layout')} (written by wsml "
            f"{payload.get('wsml_version')}); this wsml reads layout {LAYOUT}: use that version of wsml"
        )
    if isinstance(payload, dict) and "model" in payload and "meta" in payload:
        raise WsmlError(f"{path}: a training checkpoint, not a model file; pass the run's model.pth (or its folder)")
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise WsmlError(
            f"{path}: bare weights (a state dict, as wsml before 0.2 wrote model.pth), without the classes, "
            "input size and thresholds a model file carries; retrain with this wsml to get a model file"
        )
    raise WsmlError(f"{path}: not a wsml model file; pass the model.pth of a wsml run (or its run folder)")
