"""`wsml calibrate`: fit a trained model's per-class thresholds again on a valid split, without training."""

from __future__ import annotations

from wsml_fast.core.process import Process, launched
from wsml_fast.data.loaders import split_dataset
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.inference.evaluate import model_table, scoring_of
from wsml_fast.inference.trained import TrainedModel
from wsml_fast.model.decisions import FittedThresholds, ThresholdRule
from wsml_fast.model.evaluation import fit_split_thresholds


def calibrate(
    model: TrainedModel, source: DatasetFiles, rule: ThresholdRule, process: Process | None = None
) -> FittedThresholds:
    """Fit by `rule` on the valid split of `source` and rewrite, atomically once the fitting is done, the model
    file and, when the model was opened through its run folder, the run's thresholds.csv (a model file elsewhere
    is rewritten alone: no file beside it is touched)."""
    process = process or launched()
    table = model_table(model, source, "valid")
    dataset = split_dataset(table, "valid", model.img_size)
    fitted = fit_split_thresholds(model.classifier(process.device), dataset, rule, scoring_of(model, process))
    refitted = model.file.with_thresholds(fitted.values, str(rule))
    if model.run is not None:
        model.run.save_decisions(refitted, fitted.csv_text(model.classes))
    else:
        refitted.save(model.path)
    return fitted
