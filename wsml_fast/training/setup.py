"""The first step of a run: read and check the data, build the model, open the run folder."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from fastai.torch_core import set_seed

from wsml_fast.core.process import Process, launched
from wsml_fast.core.report import Reporter
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.loaders import default_workers
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.data.table import PartialLabelTable, check_images, load_table
from wsml_fast.learning.contract import epoch_score, kept_weights
from wsml_fast.model.classifier import Classifier, build_model
from wsml_fast.model.modelfile import ModelFile, ModelSpec
from wsml_fast.schemes import get_scheme, settings_of
from wsml_fast.schemes.build import training_labels
from wsml_fast.training.config import TrainConfig
from wsml_fast.training.continuity import check_inputs, input_digests
from wsml_fast.training.runfolder import RunFolder


@dataclass
class Setup:
    """What the steps of one run share."""

    config: TrainConfig
    table: PartialLabelTable
    train_labels: LabelStore
    process: Process  # at the run's precision
    model: Classifier
    origin: str
    run: RunFolder
    say: Reporter

    @property
    def device(self) -> torch.device:
        return self.process.device

    @property
    def precision(self) -> str:
        return self.process.precision

    def model_spec(self) -> ModelSpec:
        mean, std = self.model.normalization
        classes = tuple(self.table.classes)
        return ModelSpec(self.config.backbone, classes, self.config.img_size, mean, std, self.config.boost_lu)

    def model_file(self, weights: dict[str, torch.Tensor], epoch: dict) -> ModelFile:
        """The model file of `weights`, the weights of the epoch whose metrics row is `epoch` (its raw weights or
        their average: `kept_weights`), with their valid mAP (thresholds are fitted when the run ends)."""
        training = {
            "scheme": self.config.scheme,
            "dataset": self.table.source.name,
            "epoch": epoch["epoch"],
            "valid_map": epoch_score(epoch),
            "weights": kept_weights(epoch),
            "weights_origin": self.origin,
            "config": {k: v for k, v in self.config.values().items() if k != "out"},  # the model may move
        }
        return ModelFile.unfitted(self.model_spec(), weights, training)

    def meta(self) -> dict:
        """What the checkpoint says about the run besides its state."""
        boost = self.config.boost_lu
        return {
            "config": self.config.values(),
            "sources": dict(self.config.sources),
            "backbone": self.config.backbone,
            "classes": self.table.classes,
            "img_size": self.config.img_size,
            "head": "linear" if boost is None else f"boost-lu {boost:g}",
            "weights_origin": self.origin,
            "inputs": input_digests(self.table),  # what a resumed run must find unchanged
            "world_size": self.process.world_size,
        }


def _resolved(config: TrainConfig, **values) -> TrainConfig:
    """Fill in values the run decided itself (input size, workers, output folder) and say so."""
    unset = {k: v for k, v in values.items() if getattr(config, k) is None}
    updated = dataclasses.replace(config, **unset)
    updated.sources = {**config.sources, **{k: "resolved" for k in unset}}
    return updated


def _describe(setup: Setup) -> None:
    table, config, say = setup.table, setup.config, setup.say
    counts = {s: len(table.rows(s)) for s in ("train", "valid", "test")}
    train = table.observed_of("train")
    say(
        f"data: {table.source.observed_csv.parent} | {len(table.classes)} classes | "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f" | observed per train image: {train.count(1, axis=1).mean():.2f} positive, "
        f"{train.count(0, axis=1).mean():.2f} negative | truth.csv: {'yes' if table.truth is not None else 'no'}"
    )
    for note in table.notes:
        say(f"note: {note}")
    settings = "".join(f" {k}={v}" for k, v in settings_of(config).items() if v is not None)
    head = "" if config.boost_lu is None else f" | BoostLU head (alpha {config.boost_lu:g})"
    say(
        f"model: {config.backbone} ({setup.origin}) at {config.img_size}px{head} | scheme {config.scheme}{settings} "
        f"| {setup.device.type} {setup.precision}"
    )
    if setup.process.parallel:
        bs, processes = config.bs, setup.process.world_size
        say(
            f"data parallel: {processes} processes | global batch {bs} x {processes} = {bs * processes} "
            f"| SyncBatchNorm {'on' if config.sync_bn else 'off'}"
        )
    if config.accumulate > 1:
        say(f"gradient accumulation: {config.accumulate} batches per optimizer step | {_effective_batch(setup)}")
    say(f"run folder: {setup.run.path}")


def _effective_batch(setup: Setup) -> str:
    """The inputs of one optimizer step: batch x accumulated batches (x processes), and linear-init's linear
    phase's where its batch size differs."""
    config, processes = setup.config, setup.process.world_size
    sizes = {"effective batch": config.bs}
    if config.mode == "linear-init" and config.linear_bs not in (None, config.bs):
        sizes["linear phase's"] = config.linear_bs
    factors = [config.accumulate] + ([processes] if processes > 1 else [])
    return " | ".join(
        f"{name} {' x '.join(map(str, [bs, *factors]))} = {bs * math.prod(factors)}" for name, bs in sizes.items()
    )


def set_up(
    config: TrainConfig,
    source: DatasetFiles,
    run: RunFolder,
    process: Process | None = None,
    resumed: dict | None = None,
) -> Setup:
    """Read and check the data, build the model, and open the run folder (a new one, or a resumed run's), for
    `process` (by default: this process as launched), which runs at the config's precision."""
    process = process or launched()
    table = load_table(source, config.valid_fraction, config.seed)
    if config.check_images:
        check_images(source.images_root, table.images, source.observed_csv, speaks=process.writes)
    train_labels = training_labels(get_scheme(config.scheme), table)
    if resumed:
        check_inputs(run, resumed, table, train_labels)
    process = process.with_precision(config.precision)
    set_seed(config.seed)  # (cuDNN's switches are the command's: `process_switches`)
    model, size, origin = build_model(
        config.backbone, len(table.classes), config.pretrained, config.weights, config.img_size, config.boost_lu
    )
    say = run.reporter() if resumed else run.create()
    config = _resolved(config, img_size=size, workers=default_workers(), out=str(run.path))
    setup = Setup(config, table, train_labels, process, model, origin, run, say)
    if run.unlocked:
        say(f"note: {run.path}: this file system has no file locks, so nothing keeps a second process out of the run")
    run.write_config(config)
    _describe(setup)
    return setup
