"""`--ema DECAY`: the average is updated at every optimizer step and scored every epoch beside the raw weights; one
epoch score (the better of the two) picks the best epoch, whose better weights the run keeps and names."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback
from helpers import BS, TINY, N, invoke, observed_labels, tiny_learner, truth_labels

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.learning.contract import RunState, epoch_score, kept_weights
from wsml_fast.model.metrics import mean_average_precision
from wsml_fast.training.accumulation import EpochGradientAccumulation
from wsml_fast.training.config import resolve
from wsml_fast.training.weight_average import WeightAverageCallback

NAN = float("nan")


def test_an_epoch_scores_the_better_of_its_raw_and_averaged_weights() -> None:
    rows = [
        {"epoch": 1, "valid_map": 40.0},  # no average: the raw weights
        {"epoch": 2, "valid_map": 41.0, "valid_map_ema": 41.0},  # a tie keeps the raw weights
        {"epoch": 3, "valid_map": 39.0, "valid_map_ema": 42.5},
        {"epoch": 4, "valid_map": NAN, "valid_map_ema": 42.5},  # as high, but later
    ]
    assert [kept_weights(row) for row in rows] == ["raw", "raw", "ema", "ema"]
    assert [epoch_score(row) for row in rows] == [40.0, 41.0, 42.5, 42.5]
    assert RunState(rows).best()["epoch"] == 3
    assert np.isnan(epoch_score({"epoch": 5, "valid_map": NAN}))


class Snapshots(Callback):
    """The trained module's weights after every optimizer step."""

    order = 99

    def before_fit(self) -> None:
        self.weights: list[torch.Tensor] = []

    def after_step(self) -> None:
        self.weights.append(self.learn.model[1].weight.detach().clone())


def test_the_average_follows_every_optimizer_step_and_is_scored_on_valid() -> None:
    snapshots, decay = Snapshots(), 0.5
    learn = tiny_learner([EpochGradientAccumulation(3), snapshots], observed_labels())
    whole = torch.nn.ModuleDict({"head": learn.model})  # the model the run saves: the average is of its head
    average = WeightAverageCallback(decay, whole, "fp32", "skip")
    learn.add_cb(average)
    learn.run_state.stage = SimpleNamespace(inputs="features")
    dataset = learn.dls.valid.dataset  # the tiny learner's one dataset: trained and scored on the full truth
    dataset.labels = LabelStore.from_dense(truth_labels())
    learn.fit(2, lr=0.5)

    assert N // BS == 4 and average.step == len(snapshots.weights) == 2 * 2  # two steps an epoch of 4 batches
    expected = snapshots.weights[0]  # timm's warm-up: the first step's weights, then a decay that grows to DECAY
    for step, weights in enumerate(snapshots.weights[1:], start=2):
        warm = min(decay, 1 - (1 + (step - 1)) ** (-2 / 3))
        expected = warm * expected + (1 - warm) * weights
    saved = average.averaged_weights()
    assert saved.keys() == whole.state_dict().keys()
    torch.testing.assert_close(saved["head.1.weight"], expected)
    assert not torch.equal(saved["head.1.weight"], learn.model[1].weight)

    scores = torch.sigmoid(average.average.module(dataset.images)).detach().numpy()
    assert learn.run_state.values["valid_map_ema"] == pytest.approx(mean_average_precision(scores, truth_labels()).map)


@pytest.mark.parametrize("mode", ["end-to-end", "linear"])
def test_a_run_keeps_the_weights_that_scored_higher_and_says_which(
    mode: str, demo_folder: Path, tmp_path: Path
) -> None:
    args = ["--data", demo_folder, *TINY, "--epochs", "3", "--mode", mode, "--ema", "0.9", "--accumulate", "2"]
    result = invoke("train", *args, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "gradient accumulation: 2 batches per optimizer step | effective batch 16 x 2 = 32" in result.output
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert np.isfinite(metrics["valid_map_ema"]).all() and (metrics["valid_map_ema"] != metrics["valid_map"]).any()
    best = RunState(metrics.to_dict("records")).best()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["best_epoch"], results["weights"]) == (best["epoch"], kept_weights(best))
    assert results["valid_map"] == pytest.approx(epoch_score(best))
    assert f"best epoch {best['epoch']} ({kept_weights(best)} weights)" in result.output.strip().splitlines()[-1]
    training = torch.load(tmp_path / "run" / "model.pth", weights_only=True)["training"]
    assert (training["epoch"], training["weights"]) == (best["epoch"], kept_weights(best))
    scored = invoke("eval", tmp_path / "run", "--split", "valid", "--json")  # the kept weights score as recorded
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output.strip().splitlines()[-1])["map"] == pytest.approx(epoch_score(best), abs=1e-3)


@pytest.mark.parametrize("decay", [1, -0.5])
def test_the_decay_lies_between_0_and_1(decay: float) -> None:
    with pytest.raises(WsmlError, match="--ema must be"):
        resolve(None, None, {"ema": decay})


def test_ema_0_turns_off_a_recipes_average(demo_folder: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "averaging.yaml"
    recipe.write_text("ema: 0.9\n")
    assert not resolve({"ema": 0.9}, "averaging", {"ema": 0}).averages
    result = invoke("train", "--data", demo_folder, *TINY, "--recipe", recipe, "--ema", "0", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "valid_map_ema" not in pd.read_csv(tmp_path / "run" / "metrics.csv").columns
    assert "weights)" not in result.output.strip().splitlines()[-1]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["weights"] == "raw"
