"""A trained model as `eval`, `predict`, `calibrate`, `export` and Python code open it: from its model file, or
from a run folder (whose model.pth it reads, and which can say when the run did not finish).

    import wsml_fast
    model = wsml_fast.load_model("runs/demo-an-20261202/model.pth")   # or the run folder
    probabilities = model.probabilities(["a.jpg", "b.jpg"])            # N x C, float32
    model.decide(probabilities)                                         # [["cat", "dog"], []]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process, launched
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import ImageLabelDataset, make_loader
from wsml_fast.model.modelfile import ModelFile
from wsml_fast.model.scoring import scored_batches
from wsml_fast.training.config import TrainConfig, apply_layer
from wsml_fast.training.runfolder import WEIGHTS, RunFolder


@dataclass
class TrainedModel:
    """A model file opened for use; `run` is its run folder when it was opened through one."""

    file: ModelFile
    path: Path  # the model file
    run: RunFolder | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.file.spec.classes)

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.file.thresholds, dtype=np.float64)

    @property
    def img_size(self) -> int:
        return self.file.spec.img_size

    def config(self) -> TrainConfig:
        """The configuration the model was trained with (its data, split and batch settings)."""
        return apply_layer(TrainConfig(), self.file.training.get("config", {}), str(self.path))

    def note(self) -> str | None:
        """One line when the weights are not a finished run's best (an interrupted run's best so far)."""
        return self.run.weights_note() if self.run is not None else None

    def classifier(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        return self.file.classifier(device)

    def batches(
        self, images: list[Path], batch_size: int = 64, process: Process | None = None
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """(image names, probabilities B x C) a batch at a time, in the order of `images`: never all at once.
        The model is loaded here on `process`'s device (by default: this process as launched), before any
        output is opened; the images are read as the batches are asked for."""
        process = process or launched()
        model = self.classifier(process.device)
        no_labels = LabelStore.empty(len(images), 0)  # label rows without columns: nothing N x C
        dataset = ImageLabelDataset(Path("."), [str(p) for p in images], no_labels, self.img_size)
        loader = make_loader(dataset, batch_size, False, 0, process.device)
        batches = scored_batches(model, loader, process.precision, process.device)
        return (([dataset.images[i] for i in rest[-1].tolist()], scores.cpu().numpy()) for scores, rest in batches)

    def probabilities(self, images: list[str | Path], batch_size: int = 64) -> np.ndarray:
        """N x C probabilities of image files, in their order (for Python use; `wsml predict` streams)."""
        parts = [scores for _, scores in self.batches([Path(p) for p in images], batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

    def decide(self, probabilities: np.ndarray, threshold: float | None = None) -> list[list[str]]:
        """Each row's classes at or above their thresholds (the model's per-class ones, or one `threshold`)."""
        cut = self.thresholds if threshold is None else np.full(len(self.classes), threshold)
        return [[self.classes[c] for c in np.flatnonzero(row >= cut)] for row in probabilities]


def load_model(path: Path | str) -> TrainedModel:
    """A trained model from a run folder (its model.pth) or a model file (`wsml_fast.load_model`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        run = RunFolder.open(path)
        return TrainedModel(run.model_file(), run.file(WEIGHTS), run)
    if not path.exists():
        raise WsmlError(f"{path}: no such run folder or model file")
    return TrainedModel(ModelFile.load(path), path)
