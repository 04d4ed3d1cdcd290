"""What `wsml train --resume` must find as the run left it: its settings (config.yaml against the checkpoint's own
copy), its launch (how many processes train it) and every input that shapes its results (the images listed, the
classes, the splits, the observed labels and the truth). A run continued on anything else ends as no run would
have (its best epoch chosen across two truths, a schedule made for another global batch), so each difference is
refused in one line naming it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.data.table import PartialLabelTable
from wsml_fast.training.config import TrainConfig
from wsml_fast.training.runfolder import CHECKPOINT, CONFIG, RunFolder


def _shown(value: Any) -> str:
    return json.dumps(value)


def check_settings(run: RunFolder, saved: TrainConfig, meta: dict) -> None:
    """config.yaml must hold the settings the checkpoint was trained with (`out` aside: a folder may move; `epochs`
    may have grown, as `--epochs` grows it)."""
    now = saved.values()
    for name, trained in meta["config"].items():
        if name == "out" or name not in now or now[name] == trained:
            continue
        if name == "epochs" and isinstance(now[name], int) and now[name] > trained:
            continue
        raise WsmlError(
            f"--resume {run.path}: {CONFIG} has {name}: {_shown(now[name])} but the run was trained with {name}: "
            f"{_shown(trained)} (its {CHECKPOINT}); put {CONFIG} back as it was, or start a new run with the new value"
        )


def check_launch(run: RunFolder, meta: dict, process: Process) -> None:
    """The run goes on with as many processes as it was trained by: their number makes the global batch and the
    schedule. (A checkpoint of a wsml that did not record it was trained by one.)"""
    trained = meta.get("world_size", 1)
    if trained == process.world_size:
        return
    how = "`wsml train --resume`, without torchrun" if trained == 1 else f"torchrun with {trained} processes in all"
    raise WsmlError(
        f"--resume {run.path}: the run was trained by {trained} process{'es' if trained > 1 else ''} and this "
        f"launch has {process.world_size}; resume it as it was launched: {how}"
    )


def input_digests(table: PartialLabelTable) -> dict[str, str]:
    """A digest of each input that shapes the results, in the order a difference is reported."""

    def digest(items) -> str:
        return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()[:16]

    return {
        "images": digest(table.images),
        "classes": digest(table.classes),
        "splits": digest(table.splits),
        "observed": table.observed.digest()[:16],
        "truth": table.truth.digest()[:16] if table.truth is not None else "none",
    }


def _described(part: str, table: PartialLabelTable) -> str:
    observed, truth = table.source.observed_csv, table.source.truth_csv
    return {
        "images": f"the images listed in {observed}",
        "classes": f"the classes of {observed}",
        "splits": f"the splits of {observed}",
        "observed": f"the labels in {observed}",
        "truth": f"the truth labels ({truth or f'no truth.csv beside {observed.name} now'})",
    }[part]


def check_inputs(run: RunFolder, meta: dict, table: PartialLabelTable, train_labels: LabelStore) -> None:
    """The inputs must be those the checkpoint was trained on, each compared on its own and named when it
    differs; a checkpoint of an earlier wsml holds one digest of the images, splits, classes and training labels."""
    recorded = meta.get("inputs")
    if recorded is None:
        changed = meta["data"] != _earlier_digest(table, train_labels)
        what = "the training data (images, splits, classes or labels)"
    else:
        now = input_digests(table)
        parts = [part for part in now if recorded.get(part) != now[part]]
        changed, what = bool(parts), _described(parts[0], table) if parts else ""
    if changed:
        raise WsmlError(
            f"--resume {run.path}: {what} changed since the run started; a run resumes only on the inputs it "
            "started with: put them back, or start a new run"
        )


def _earlier_digest(table: PartialLabelTable, train_labels: LabelStore) -> str:
    digest = hashlib.sha256()
    for part in (table.images, list(table.splits), table.classes):
        digest.update("\n".join(map(str, part)).encode())
    digest.update(train_labels.digest().encode())
    return digest.hexdigest()[:16]
