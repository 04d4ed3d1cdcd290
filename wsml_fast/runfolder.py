"""The run folder: everything a run produced, and all that `wsml eval` and `wsml predict` need.

config.yaml    resolved configuration and where each value came from (enough to rerun)
metrics.csv    one row per epoch
results.json   best epoch, valid and test mAP, classes, input size
model.pth      the best epoch's weights (state dict of the whole classifier)
train.log      everything the run printed
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from wsml_fast.config import TrainConfig
from wsml_fast.errors import WsmlError

CONFIG, METRICS, RESULTS, WEIGHTS, LOG = "config.yaml", "metrics.csv", "results.json", "model.pth", "train.log"


def default_run_dir(dataset: str, scheme: str) -> Path:
    return Path("runs") / f"{dataset}-{scheme}-{time.strftime('%Y%m%d-%H%M%S')}"


class Reporter:
    """Prints to the console and appends the same lines to the run's log file."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path

    def __call__(self, message: str, console: bool = True) -> None:
        if console:
            print(message, file=sys.stdout, flush=True)
        if self.log_path is not None:
            with self.log_path.open("a") as handle:
                handle.write(message + "\n")


class RunFolder:
    """A finished (or running) training run on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run folder with its weights; anything else is a clear error."""
        run = cls(path)
        if not run.path.is_dir():
            raise WsmlError(f"{path}: run folder not found")
        for name in (CONFIG, RESULTS, WEIGHTS):
            if not (run.path / name).is_file():
                raise WsmlError(f"{path}: not a finished wsml run folder (no {name}); pass the --out of `wsml train`")
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def config(self) -> TrainConfig:
        return TrainConfig.from_yaml(self.file(CONFIG))

    def results(self) -> dict:
        try:
            return json.loads(self.file(RESULTS).read_text())
        except json.JSONDecodeError:
            raise WsmlError(f"{self.file(RESULTS)}: not valid JSON; the run folder is damaged") from None

    def write_results(self, results: dict) -> None:
        self.file(RESULTS).write_text(json.dumps(results, indent=2) + "\n")

    def load_model(self, device):
        """The trained classifier, rebuilt from the config and loaded with the best weights."""
        import torch

        from wsml_fast.model import build_model

        config, results = self.config(), self.results()
        model, _, _ = build_model(config.backbone, len(results["classes"]), False, img_size=results["img_size"])
        state = torch.load(self.file(WEIGHTS), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.to(device).eval()
