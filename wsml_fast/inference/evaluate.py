"""`wsml eval`: score a trained model on a split of its own data or of another dataset."""

from __future__ import annotations

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process, launched
from wsml_fast.data.labels import SPLITS
from wsml_fast.data.loaders import split_dataset
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.data.table import PartialLabelTable, check_images, load_table
from wsml_fast.inference.trained import TrainedModel
from wsml_fast.model.evaluation import Scoring, SplitEvaluation, evaluate_split
from wsml_fast.model.scoring import evaluation_bs


def model_table(model: TrainedModel, source: DatasetFiles, split: str) -> PartialLabelTable:
    """The labels of `source`, split as the model's training split them; refused in one line when `split` is not
    a split's name, when its classes are not the model's, or when `split` has no rows."""
    if split not in SPLITS:
        raise WsmlError(f"--split {split!r} is not one of: {', '.join(SPLITS)}")
    config = model.config()
    table = load_table(source, config.valid_fraction, config.seed, for_training=False)
    if table.classes != model.classes:
        raise WsmlError(
            f"{source.observed_csv}: class columns differ from the model's ({len(table.classes)} vs "
            f"{len(model.classes)} classes, or another order); use data with the model's classes"
        )
    if not len(table.rows(split)):
        raise WsmlError(f"--split {split}: {source.observed_csv} has no rows in that split")
    check_images(source.images_root, [table.images[i] for i in table.rows(split)], source.observed_csv)
    return table


def scoring_of(model: TrainedModel, process: Process) -> Scoring:
    config = model.config()
    return Scoring(process.precision, process.device, evaluation_bs(config.bs), config.workers or 0)


def evaluate(
    model: TrainedModel, source: DatasetFiles, split: str, convention: str, process: Process | None = None
) -> SplitEvaluation:
    """mAP, the F1 family and per-class figures of `model` on `split` of `source` (truth when known, else the
    observed entries), scored on `process`'s device at its precision (by default: this process as launched)."""
    process = process or launched()
    table = model_table(model, source, split)
    dataset = split_dataset(table, split, model.img_size)
    network = model.classifier(process.device)
    thresholds, rule = model.file.thresholds, model.file.threshold_rule
    return evaluate_split(network, dataset, model.classes, thresholds, rule, convention, scoring_of(model, process))
