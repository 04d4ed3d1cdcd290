"""`wsml train`: CSV -> dataset -> DataLoaders -> Learner(+callbacks) -> run folder."""

from __future__ import annotations

import dataclasses
import sys
import time
from functools import partial
from pathlib import Path

import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.metrics import AccumMetric, ActivationType
from fastai.optimizer import OptimWrapper
from fastai.torch_core import params, set_seed

from wsml_fast.callbacks import (
    DeviceMixedPrecision,
    EarlyStopCallback,
    FrozenBodyCallback,
    ItemIndexCallback,
    RunLogCallback,
    SaveBestCallback,
    TrainRecoveryCallback,
)
from wsml_fast.config import TrainConfig
from wsml_fast.data import ImageLabelDataset, default_workers, make_loader
from wsml_fast.errors import WsmlError
from wsml_fast.features import FeatureDataset, cache_key, cached_features
from wsml_fast.inference import AMP_DTYPES, pick_device, predict_scores, resolve_precision
from wsml_fast.memorization import MemorizationCallback, sample_entries
from wsml_fast.metrics import mean_average_precision
from wsml_fast.model import build_model
from wsml_fast.runfolder import CONFIG, LOG, METRICS, WEIGHTS, Reporter, RunFolder, default_run_dir
from wsml_fast.schemes import scheme_parts
from wsml_fast.sources import DataSource
from wsml_fast.table import PartialLabelTable, check_images, load_table

OPTIMIZERS = {  # what the reference implementations used: torch's optimizers, driven through fastai's wrapper
    "adam": partial(OptimWrapper, opt=partial(torch.optim.Adam, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "sgd": partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-3)),
}


def map_metric(convention: str) -> AccumMetric:
    """Validation mAP over the epoch's gathered scores (fastai's APScoreMulti cannot skip unlabelled)."""

    def valid_map(scores: np.ndarray, labels: np.ndarray) -> float:
        return mean_average_precision(scores, labels, convention=convention).map

    return AccumMetric(valid_map, activation=ActivationType.Sigmoid, flatten=False, to_np=True)


def body_head_split(model: torch.nn.Module) -> list:
    return [params(model.body), params(model.head)]


def _resolved(config: TrainConfig, **values) -> TrainConfig:
    """Fill in values the run decided itself (input size, workers, output folder) and say so."""
    unset = {k: v for k, v in values.items() if getattr(config, k) is None}
    updated = dataclasses.replace(config, **unset)
    updated.sources = {**config.sources, **{k: "resolved" for k in unset}}
    return updated


def _describe(table: PartialLabelTable, say: Reporter) -> None:
    counts = {s: len(table.rows(s)) for s in ("train", "valid", "test")}
    train = table.observed[table.rows("train")]
    say(
        f"data: {table.source.observed_csv.parent} | {len(table.classes)} classes | "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f" | observed per train image: {(train == 1).sum(1).mean():.2f} positive, "
        f"{(train == 0).sum(1).mean():.2f} negative | truth.csv: {'yes' if table.truth is not None else 'no'}"
    )
    for note in table.notes:
        say(f"note: {note}")


def _run_path(config: TrainConfig, dataset_name: str) -> Path:
    """Where the run goes: checked before any work, created only once the model is built (a bad option or
    weights file leaves no empty run folder behind)."""
    path = Path(config.out) if config.out else default_run_dir(dataset_name, config.scheme)
    if (path / WEIGHTS).exists() or (path / CONFIG).exists():
        raise WsmlError(f"--out {path}: already holds a run; choose another folder")
    return path


def _create_run_dir(path: Path) -> RunFolder:
    path.mkdir(parents=True, exist_ok=True)
    (path / LOG).unlink(missing_ok=True)
    return RunFolder(path)


def stages(config: TrainConfig) -> list[tuple[int, bool]]:
    """(epochs, backbone frozen) per fit: linear-init trains the head alone for its first `linear_epochs`.

    In linear mode the Learner holds the head alone (on cached features): nothing there to freeze.
    """
    if config.mode == "linear-init":
        linear = min(config.linear_epochs, config.epochs)
        return [(n, frozen) for n, frozen in ((linear, True), (config.epochs - linear, False)) if n > 0]
    return [(config.epochs, False)]


def _fit_stages(learn: Learner, config: TrainConfig, say: Reporter) -> None:
    lr = slice(config.lr, config.lr * config.head_lr_mult) if config.head_lr_mult != 1 else config.lr
    for epochs, frozen in stages(config):
        learn.freeze() if frozen else learn.unfreeze()
        if config.schedule == "one-cycle":
            learn.fit_one_cycle(epochs, lr)
        else:
            learn.fit(epochs, lr)
        if getattr(learn, "early_stopped", None):
            say(f"early stop: {learn.early_stopped}")
            return


def _image_dataset(
    config: TrainConfig, table: PartialLabelTable, split: str, labels: np.ndarray, augment: bool
) -> ImageLabelDataset:
    images = [table.images[i] for i in table.rows(split)]
    return ImageLabelDataset(
        table.source.images_root, images, labels, config.img_size, augment, config.hflip, config.seed
    )


def _datasets(config, table, train_labels, model, origin, precision, device, say) -> tuple:
    """Train and valid datasets (images, or in linear mode cached features of the frozen body), and a view of
    the training set without augmentation that carries its full truth (None without a truth.csv)."""
    train_ds = _image_dataset(config, table, "train", train_labels, True)
    valid_ds = _image_dataset(config, table, "valid", table.eval_labels("valid"), False)
    truth = None if table.truth is None else table.truth[table.rows("train")]
    train_view = None if truth is None else train_ds.without_augmentation(truth)
    if config.mode != "linear":
        return train_ds, valid_ds, train_view
    stamp = str(table.source.observed_csv.stat().st_mtime_ns)

    def features(ds: ImageLabelDataset) -> torch.Tensor:
        key = cache_key(config.backbone, origin, config.img_size, precision, ds, stamp)
        plain = ds.without_augmentation()
        return cached_features(model, plain, key, config.bs * 2, config.workers, precision, device, say)

    train_features = features(train_ds)
    return (
        FeatureDataset(train_features, train_labels),
        FeatureDataset(features(valid_ds), valid_ds.labels),
        None if truth is None else FeatureDataset(train_features, truth),
    )


RECOVERY_SAMPLE = 1000  # training images scored per epoch for train_recovery_map


def _diagnostics(config, table, train_labels, train_view, run, precision, device) -> list:
    """Callbacks that need the truth of the training set: recovery mAP, and memorization when asked for."""
    if train_view is None:
        if config.track_memorization:
            raise WsmlError("--track-memorization needs truth.csv (the truth of the unobserved training entries)")
        return []
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.permutation(len(train_view))[:RECOVERY_SAMPLE])
    loader = make_loader(train_view.subset(sample), config.bs * 2, False, config.workers, device)
    callbacks = [TrainRecoveryCallback(loader, config.map_convention, precision)]
    if config.track_memorization:
        rows, classes, false_negative = sample_entries(train_labels, train_view.labels, seed=config.seed)
        inputs = torch.stack([train_view[i][0] for i in rows])
        every = max(1, len(train_labels) // config.bs // 20)  # about 20 points per epoch
        callbacks.append(MemorizationCallback(inputs, classes, false_negative, every, run.path))
    return callbacks


def compile_in_place(model: torch.nn.Module, sample: torch.Tensor, say: Reporter) -> None:
    """torch.compile the model in place (its state-dict keys stay as they are), after a trial on a sample batch;
    where compiling fails, say so and train uncompiled."""
    try:
        with torch.no_grad():
            torch.compile(model)(sample)
    except Exception as exc:  # noqa: BLE001 - compilers fail in many ways; training goes on without
        say(f"note: --compile failed ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); running uncompiled")
        return
    model.compile()
    say("model compiled with torch.compile")


def train(config: TrainConfig, source: DataSource) -> RunFolder:
    """Train, keep the best epoch's weights, evaluate the test split, and write the run folder."""
    started = time.perf_counter()
    table = load_table(source, config.valid_fraction, config.seed)
    check_images(source.images_root, table.images, source.observed_csv)
    train_labels = table.train_labels(config.scheme)
    device = pick_device()
    precision = resolve_precision(config.precision, device)

    run_path = _run_path(config, source.name)
    set_seed(config.seed, reproducible=device.type != "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions: inputs keep one shape all run
    model, size, origin = build_model(
        config.backbone, len(table.classes), config.pretrained, config.weights, config.img_size
    )
    run = _create_run_dir(run_path)
    say = Reporter(run.file(LOG))
    config = _resolved(config, img_size=size, workers=default_workers(), out=str(run.path))
    config.to_yaml(run.file(CONFIG))
    _describe(table, say)
    say(f"model: {config.backbone} ({origin}) at {size}px | scheme {config.scheme} | {device.type} {precision}")
    say(f"run folder: {run.path}")

    model = model.to(device)
    if device.type == "cuda" and precision in AMP_DTYPES:
        model = model.use_channels_last()
    linear = config.mode == "linear"
    train_ds, valid_ds, train_view = _datasets(config, table, train_labels, model, origin, precision, device, say)
    loaders = [
        make_loader(ds, config.bs, is_train, config.workers, device)
        for ds, is_train in ((train_ds, True), (valid_ds, False))
    ]
    on_terminal = sys.stdout.isatty()
    run_log = RunLogCallback(run.file(METRICS), say, print_lines=not on_terminal)
    callbacks = [ItemIndexCallback(), run_log, SaveBestCallback(Path(WEIGHTS).stem)]
    if precision in AMP_DTYPES:
        callbacks.append(DeviceMixedPrecision(amp_mode=precision))
    if config.early_stop:
        callbacks.append(EarlyStopCallback(drop=3.0))
    if config.mode == "linear-init":
        callbacks.append(FrozenBodyCallback())
    if config.compile and not linear:
        compile_in_place(model, next(iter(loaders[1]))[0][:2], say)
    callbacks += _diagnostics(config, table, train_labels, train_view, run, precision, device)
    loss, scheme_callbacks = scheme_parts(config, table, train_labels, run, say)
    learn = Learner(
        DataLoaders(*loaders, device=device),
        model.head if linear else model,
        loss_func=loss,
        opt_func=OPTIMIZERS[config.opt],
        splitter=(lambda head: [params(head)]) if linear else body_head_split,
        metrics=[map_metric(config.map_convention)],
        path=run.path,
        model_dir=".",
        cbs=callbacks + scheme_callbacks,
        train_bn=False,
    )
    if not on_terminal:
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None
    _fit_stages(learn, config, say)
    if linear:  # the best head is back in `model`; the run folder keeps the whole classifier
        torch.save(model.state_dict(), run.file(WEIGHTS))

    best = run_log.best("valid_map")
    results = {
        "best_epoch": best["epoch"],
        "valid_map": best.get("valid_map"),
        "test_map": None,
        "map_convention": config.map_convention,
        "classes": table.classes,
        "img_size": size,
        "weights_origin": origin,
        "device": device.type,
        "precision": precision,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    if len(table.rows("test")):
        test_ds = _image_dataset(config, table, "test", table.eval_labels("test"), False)
        test_loader = make_loader(test_ds, config.bs * 2, False, config.workers, device)
        scores = predict_scores(model, test_loader, precision, device)
        test = mean_average_precision(scores, test_ds.labels, table.classes, config.map_convention)
        results.update(test_map=test.map, test_per_class=test.per_class, test_skipped=test.skipped)
    else:
        say("note: no test rows: test mAP not computed")
    run.write_results(results)
    test_text = f"{results['test_map']:.2f}" if results["test_map"] is not None else "n/a"
    say(
        f"done in {results['train_seconds']:.0f}s | best epoch {best['epoch']} | "
        f"valid mAP {best.get('valid_map', float('nan')):.2f} | test mAP {test_text} | run folder {run.path}"
    )
    return run
