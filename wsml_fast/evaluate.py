"""`wsml eval`: score a run's best weights on a split of its own data or of another dataset."""

from __future__ import annotations

from wsml_fast.data import ImageLabelDataset, make_loader
from wsml_fast.errors import WsmlError
from wsml_fast.inference import pick_device, predict_scores, resolve_precision
from wsml_fast.metrics import MapResult, mean_average_precision
from wsml_fast.runfolder import RunFolder
from wsml_fast.sources import DataSource
from wsml_fast.table import check_images, load_table


def evaluate(run: RunFolder, source: DataSource, split: str, convention: str) -> MapResult:
    """mAP and per-class AP of the run's model on `split` of `source` (truth when known, else observed)."""
    config, results = run.config(), run.results()
    table = load_table(source, config.valid_fraction, config.seed, for_training=False)
    if table.classes != results["classes"]:
        raise WsmlError(
            f"{source.observed_csv}: class columns differ from the run's ({len(table.classes)} vs "
            f"{len(results['classes'])} classes, or another order); evaluate on data with the same classes"
        )
    rows = table.rows(split)
    if not len(rows):
        raise WsmlError(f"--split {split}: {source.observed_csv} has no rows in that split")
    images = [table.images[i] for i in rows]
    check_images(source.images_root, images, source.observed_csv)
    device = pick_device()
    dataset = ImageLabelDataset(source.images_root, images, table.eval_labels(split), results["img_size"])
    loader = make_loader(dataset, config.bs * 2, False, config.workers or 0, device)
    scores = predict_scores(run.load_model(device), loader, resolve_precision("auto", device), device)
    return mean_average_precision(scores, dataset.labels, table.classes, convention)
