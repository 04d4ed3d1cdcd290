"""`wsml eval`: score a run's best weights on a split of its own data or of another dataset."""

from __future__ import annotations

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process, launched
from wsml_fast.data.loaders import ImageLabelDataset
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.data.table import check_images, load_table
from wsml_fast.model.metrics import MapResult
from wsml_fast.model.scoring import evaluation_bs, score_split
from wsml_fast.training.runfolder import RunFolder


def evaluate(
    run: RunFolder, source: DatasetFiles, split: str, convention: str, process: Process | None = None
) -> MapResult:
    """mAP and per-class AP of the run's model on `split` of `source` (truth when known, else observed), scored
    on `process`'s device at its precision (by default: this process as launched, automatic precision)."""
    config, info = run.config(), run.model_info()
    table = load_table(source, config.valid_fraction, config.seed, for_training=False)
    if table.classes != info.classes:
        raise WsmlError(
            f"{source.observed_csv}: class columns differ from the run's ({len(table.classes)} vs "
            f"{len(info.classes)} classes, or another order); evaluate on data with the same classes"
        )
    rows = table.rows(split)
    if not len(rows):
        raise WsmlError(f"--split {split}: {source.observed_csv} has no rows in that split")
    images = [table.images[i] for i in rows]
    check_images(source.images_root, images, source.observed_csv)
    process = process or launched()
    dataset = ImageLabelDataset(source.images_root, images, table.eval_labels(split), info.img_size)
    args = (convention, process.precision, process.device, evaluation_bs(config.bs), config.workers or 0)
    return score_split(run.load_model(info, process.device), dataset, table.classes, *args)
