"""`wsml eval`: score a run's best weights on a split of its own data or of another dataset."""

from __future__ import annotations

from wsml_fast.data import ImageLabelDataset
from wsml_fast.errors import WsmlError
from wsml_fast.inference import pick_device, resolve_precision, score_split
from wsml_fast.metrics import MapResult
from wsml_fast.runfolder import RunFolder
from wsml_fast.sources import DataSource
from wsml_fast.table import check_images, load_table


def evaluate(run: RunFolder, source: DataSource, split: str, convention: str) -> MapResult:
    """mAP and per-class AP of the run's model on `split` of `source` (truth when known, else observed)."""
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
    device = pick_device()
    dataset = ImageLabelDataset(source.images_root, images, table.eval_labels(split), info.img_size)
    precision = resolve_precision("auto", device)
    args = (convention, precision, device, config.bs * 2, config.workers or 0)
    return score_split(run.load_model(device), dataset, table.classes, *args)
