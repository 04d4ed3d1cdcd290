"""`wsml calibrate`: fit a trained model's per-class thresholds again on a valid split, without training."""

from __future__ import annotations

from wsml_fast.core.atomic import write_text
from wsml_fast.core.process import Process, launched
from wsml_fast.data.loaders import split_dataset
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.inference.evaluate import model_table, scoring_of
from wsml_fast.inference.trained import TrainedModel
from wsml_fast.model.decisions import FittedThresholds, ThresholdRule
from wsml_fast.model.evaluation import fit_split_thresholds
from wsml_fast.training.runfolder import THRESHOLDS


def calibrate(
    model: TrainedModel, source: DatasetFiles, rule: ThresholdRule, process: Process | None = None
) -> FittedThresholds:
    """Fit by `rule` on the valid split of `source` and rewrite the model file and the thresholds.csv beside
    it, each atomically (both are written only once the fitting is done)."""
    process = process or launched()
    table = model_table(model, source, "valid")
    dataset = split_dataset(table, "valid", model.img_size)
    fitted = fit_split_thresholds(model.classifier(process.device), dataset, rule, scoring_of(model, process))
    model.file.with_thresholds(fitted.values, str(rule)).save(model.path)
    write_text(model.path.parent / THRESHOLDS, fitted.csv_text(model.classes))
    return fitted
