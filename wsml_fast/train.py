"""`wsml train`: CSV -> dataset -> DataLoaders -> Learner(+callbacks) -> run folder.

A run goes through four steps, one function each: `set_up` (data, model, run folder), `build_learner`
(datasets, loaders, callbacks, the Learner; a resumed run's checkpoint goes back in here), `fit` (the stages of
the training mode, from the run's first incomplete epoch) and `score` (the test split, with the best weights).
`train` starts a run and `resume` continues one; both record in the run folder how the run ended.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
import numpy as np
import torch
from fastai.callback.core import CancelEpochException
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
    LossGuardCallback,
    NonFiniteLoss,
    RunLogCallback,
    RunState,
    SaveBestCallback,
    StopOnRequestCallback,
    TrainRecoveryCallback,
)
from wsml_fast.checkpoint import CheckpointCallback, restore
from wsml_fast.config import TrainConfig, apply_layer
from wsml_fast.data import ImageLabelDataset, check_train_batches, default_workers, make_loader
from wsml_fast.errors import WsmlError, one_line
from wsml_fast.features import FeatureDataset, cache_key, cached_features
from wsml_fast.inference import AMP_DTYPES, pick_device, resolve_precision, score_split
from wsml_fast.memorization import MemorizationCallback, sample_entries
from wsml_fast.metrics import mean_average_precision
from wsml_fast.model import Classifier, build_model
from wsml_fast.runfolder import CHECKPOINT, LOG, RESULTS, Reporter, RunFolder, default_run_dir
from wsml_fast.schemes import scheme_parts
from wsml_fast.sources import DataSource, resolve_source
from wsml_fast.stopping import RunInterrupted, StopRequest
from wsml_fast.table import PartialLabelTable, check_images, load_table

OPTIMIZERS = {  # what the reference implementations used: torch's optimizers, driven through fastai's wrapper
    "adam": partial(OptimWrapper, opt=partial(torch.optim.Adam, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "sgd": partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-3)),
}
RECOVERY_SAMPLE = 1000  # training images scored per epoch for train_recovery_map


def map_metric(convention: str) -> AccumMetric:
    """Validation mAP over the epoch's gathered scores (fastai's APScoreMulti cannot skip unlabelled)."""

    def valid_map(scores: np.ndarray, labels: np.ndarray) -> float:
        return mean_average_precision(scores, labels, convention=convention).map

    return AccumMetric(valid_map, activation=ActivationType.Sigmoid, flatten=False, to_np=True)


def body_head_split(model: torch.nn.Module) -> list:
    return [params(model.body), params(model.head)]


class ResumableLearner(Learner):
    """fastai's Learner whose fit can begin at a later epoch of its schedule (a resumed run): the epochs before
    `first_epoch` raise no events at all (fastai's SkipToEpoch would still send them `after_epoch`), and the
    schedulers see the same epoch / n_epoch, hence bit for bit the same learning rates, as an uninterrupted fit."""

    first_epoch = 0

    def _do_fit(self) -> None:
        for epoch in range(self.first_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)


@dataclass(frozen=True)
class Stage:
    """One fit of a run: `epochs` epochs after `start` completed ones, with the backbone frozen or not."""

    start: int
    epochs: int
    frozen: bool

    @property
    def end(self) -> int:
        return self.start + self.epochs


def stages(config: TrainConfig) -> list[Stage]:
    """linear-init trains the head alone for its first `linear_epochs`, then everything; other modes have one
    stage (in linear mode the Learner holds the head alone, on cached features: nothing there to freeze)."""
    if config.mode != "linear-init":
        return [Stage(0, config.epochs, False)]
    linear = min(config.linear_epochs, config.epochs)
    return [s for s in (Stage(0, linear, True), Stage(linear, config.epochs - linear, False)) if s.epochs > 0]


@dataclass
class Setup:
    """What the steps of one run share."""

    config: TrainConfig
    table: PartialLabelTable
    train_labels: np.ndarray
    device: torch.device
    precision: str
    model: Classifier
    origin: str
    run: RunFolder
    say: Reporter

    def fingerprint(self) -> str:
        """Identifies the training data: a resumed run must see the same images, splits, classes and labels."""
        digest = hashlib.sha256()
        for part in (self.table.images, list(self.table.splits), self.table.classes):
            digest.update("\n".join(map(str, part)).encode())
        digest.update(np.ascontiguousarray(self.train_labels).tobytes())
        return digest.hexdigest()[:16]

    def meta(self) -> dict:
        """What the checkpoint says about the run besides its state."""
        return {
            "config": self.config.values(),
            "sources": dict(self.config.sources),
            "backbone": self.config.backbone,
            "classes": self.table.classes,
            "img_size": self.config.img_size,
            "head": "linear",
            "weights_origin": self.origin,
            "data": self.fingerprint(),
        }


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


def set_up(config: TrainConfig, source: DataSource, run: RunFolder, resumed: dict | None = None) -> Setup:
    """Read and check the data, build the model, and open the run folder (a new one, or a resumed run's)."""
    table = load_table(source, config.valid_fraction, config.seed)
    check_images(source.images_root, table.images, source.observed_csv)
    train_labels = table.train_labels(config.scheme)
    device = pick_device()
    precision = resolve_precision(config.precision, device)
    set_seed(config.seed, reproducible=device.type != "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions: inputs keep one shape all run
    model, size, origin = build_model(
        config.backbone, len(table.classes), config.pretrained, config.weights, config.img_size
    )
    say = Reporter(run.file(LOG)) if resumed else run.create()
    config = _resolved(config, img_size=size, workers=default_workers(), out=str(run.path))
    setup = Setup(config, table, train_labels, device, precision, model, origin, run, say)
    if resumed and resumed["data"] != setup.fingerprint():
        raise WsmlError(
            f"--resume {run.path}: the training data changed since the run started (images, splits, classes or "
            "labels); a run resumes only on the same data: start a new run"
        )
    run.write_config(config)
    _describe(table, say)
    say(f"model: {config.backbone} ({origin}) at {size}px | scheme {config.scheme} | {device.type} {precision}")
    say(f"run folder: {run.path}")
    return setup


def _image_dataset(setup: Setup, split: str, labels: np.ndarray, augment: bool) -> ImageLabelDataset:
    config, table = setup.config, setup.table
    images = [table.images[i] for i in table.rows(split)]
    return ImageLabelDataset(
        table.source.images_root, images, labels, config.img_size, augment, config.hflip, config.seed
    )


def _datasets(setup: Setup) -> tuple:
    """Train and valid datasets (images, or in linear mode cached features of the frozen body), and a view of
    the training set without augmentation that carries its full truth (None without a truth.csv)."""
    config, table = setup.config, setup.table
    train_ds = _image_dataset(setup, "train", setup.train_labels, True)
    valid_ds = _image_dataset(setup, "valid", table.eval_labels("valid"), False)
    truth = None if table.truth is None else table.truth[table.rows("train")]
    train_view = None if truth is None else train_ds.without_augmentation(truth)
    if config.mode != "linear":
        return train_ds, valid_ds, train_view
    stamp = str(table.source.observed_csv.stat().st_mtime_ns)

    def features(ds: ImageLabelDataset) -> torch.Tensor:
        key = cache_key(config.backbone, setup.origin, config.img_size, setup.precision, ds, stamp)
        return cached_features(
            setup.model,
            ds.without_augmentation(),
            key,
            config.bs * 2,
            config.workers,
            setup.precision,
            setup.device,
            setup.say,
        )

    train_features = features(train_ds)
    return (
        FeatureDataset(train_features, setup.train_labels),
        FeatureDataset(features(valid_ds), valid_ds.labels),
        None if truth is None else FeatureDataset(train_features, truth),
    )


def _diagnostics(setup: Setup, train_view) -> list:
    """Callbacks that need the truth of the training set: recovery mAP, and memorization when asked for."""
    config = setup.config
    if train_view is None:
        if config.track_memorization:
            raise WsmlError("--track-memorization needs truth.csv (the truth of the unobserved training entries)")
        return []
    rng = np.random.default_rng(config.seed)
    sample = train_view.subset(np.sort(rng.permutation(len(train_view))[:RECOVERY_SAMPLE]))

    def recovery_map(model: torch.nn.Module) -> float:
        args = (config.map_convention, setup.precision, setup.device, config.bs * 2, config.workers)
        return score_split(model, sample, setup.table.classes, *args).map

    callbacks = [TrainRecoveryCallback(recovery_map)]
    if config.track_memorization:
        rows, classes, false_negative = sample_entries(setup.train_labels, train_view.labels, seed=config.seed)
        inputs = torch.stack([train_view[i][0] for i in rows])
        every = max(1, len(setup.train_labels) // config.bs // 20)  # about 20 points per epoch
        callbacks.append(MemorizationCallback(inputs, classes, false_negative, every, setup.run))
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


def build_learner(setup: Setup, stop: StopRequest | None = None, checkpoint: dict | None = None) -> Learner:
    """Datasets, loaders, callbacks and the Learner; a checkpoint's state is put back into them."""
    config, model, device, precision, run = setup.config, setup.model, setup.device, setup.precision, setup.run
    model.to(device)
    if device.type == "cuda" and precision in AMP_DTYPES:
        model.use_channels_last()
    linear = config.mode == "linear"
    train_ds, valid_ds, train_view = _datasets(setup)
    check_train_batches(model.head if linear else model, len(train_ds), config.bs)
    loaders = [
        make_loader(ds, config.bs, is_train, config.workers, device)
        for ds, is_train in ((train_ds, True), (valid_ds, False))
    ]
    history = checkpoint["meta"]["history"] if checkpoint else []
    between_stages = len(history) in {stage.start for stage in stages(config)}  # fastai's per-fit state is new
    fit_state = checkpoint["fit"] if checkpoint and not between_stages else None
    on_terminal = sys.stdout.isatty()
    callbacks = [
        RunState(history),
        ItemIndexCallback(),
        RunLogCallback(run.write_metrics, setup.say, print_lines=not on_terminal),
        SaveBestCallback(model, run.save_weights, run.save_scheme_state),
        CheckpointCallback(run.save_checkpoint, model, loaders[0], setup.meta(), fit_state),
        LossGuardCallback(config.lr, setup.say),
    ]
    if stop is not None:
        callbacks.append(StopOnRequestCallback(stop))
    if precision in AMP_DTYPES:
        callbacks.append(DeviceMixedPrecision(amp_mode=precision))
    if config.early_stop:
        callbacks.append(EarlyStopCallback(drop=3.0))
    if config.mode == "linear-init":
        callbacks.append(FrozenBodyCallback())
    if config.compile and not linear:
        compile_in_place(model, next(iter(loaders[1]))[0][:2], setup.say)
    callbacks += _diagnostics(setup, train_view)
    loss, scheme_callbacks = scheme_parts(config, setup.table, setup.train_labels, run, setup.say)
    learn = ResumableLearner(
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
    if checkpoint:
        restore(learn, model, loaders[0], checkpoint)
    return learn


def _load_best_weights(setup: Setup) -> None:
    setup.model.load_state_dict(setup.run.load_weights())


def fit(learn: Learner, setup: Setup, stop: StopRequest | None = None) -> str | None:
    """Train the stages of the mode from the run's first incomplete epoch. Returns why training ended early
    (`interrupted`, or the early-stop reason), or None when every epoch ran."""
    config, state = setup.config, learn.run_state
    lr = slice(config.lr, config.lr * config.head_lr_mult) if config.head_lr_mult != 1 else config.lr
    for index, stage in enumerate(stages(config)):
        if state.completed >= stage.end:
            continue
        if index > 0 and state.completed == stage.start:
            _load_best_weights(setup)  # the protocol: a stage starts from the best epoch of the stage before
        learn.first_epoch = state.completed - stage.start
        if learn.first_epoch == 0:  # fastai's freeze/unfreeze also clear the optimizer's state: a new stage
            learn.freeze() if stage.frozen else learn.unfreeze()
        else:  # a resumed stage keeps the checkpoint's optimizer state
            learn.opt.freeze_to(-1 if stage.frozen else 0)
        if config.schedule == "one-cycle":
            learn.fit_one_cycle(stage.epochs, lr)
        else:
            learn.fit(stage.epochs, lr)
        if stop is not None and stop():
            return "interrupted"
        reason = getattr(getattr(learn, "early_stop", None), "reason", None)
        if reason:
            setup.say(f"early stop: {reason}")
            return reason
    return None


def score(setup: Setup, history: list[dict], started: float) -> dict:
    """results.json of a run: its best epoch, and the test split scored with that epoch's weights."""
    config, table = setup.config, setup.table
    _load_best_weights(setup)
    best = RunState(history).best()
    results = {
        "best_epoch": best["epoch"],
        "valid_map": best.get("valid_map"),
        "test_map": None,
        "map_convention": config.map_convention,
        "classes": table.classes,
        "img_size": config.img_size,
        "weights_origin": setup.origin,
        "device": setup.device.type,
        "precision": setup.precision,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    if len(table.rows("test")):
        test_ds = _image_dataset(setup, "test", table.eval_labels("test"), False)
        args = (config.map_convention, setup.precision, setup.device, config.bs * 2, config.workers)
        test = score_split(setup.model, test_ds, table.classes, *args)
        results.update(test_map=test.map, test_per_class=test.per_class, test_skipped=test.skipped)
    else:
        setup.say("note: no test rows: test mAP not computed")
    return results


def _run(setup: Setup, stop: StopRequest | None, checkpoint: dict | None) -> RunFolder:
    """Build, fit and score, recording in the run folder how the run ended: finished, interrupted or failed."""
    run, say, started = setup.run, setup.say, time.perf_counter()
    completed = checkpoint["meta"]["epoch"] if checkpoint else 0
    run.write_status("running", epoch=completed)
    try:
        learn = build_learner(setup, stop, checkpoint)
        ended = fit(learn, setup, stop)
        history = learn.run_state.history
        if ended == "interrupted":
            message = (
                f"{stop.name}: stopped in epoch {len(history) + 1}; the checkpoint of epoch {len(history)} is kept; "
                f"continue with: wsml train --resume {run.path}"
            )
            say(message)
            run.write_status("interrupted", reason=stop.name, epoch=len(history))
            raise RunInterrupted(message, stop.exit_code)
        results = score(setup, history, started)
        results["status"] = "finished" if ended is None else f"finished: early stop ({ended})"
        run.write_results(results)
    except RunInterrupted:
        raise
    except BaseException as exc:
        line = _record_failure(run, exc)
        if isinstance(exc, WsmlError):
            raise WsmlError(line) from None
        raise
    run.write_status("finished", epoch=len(history))
    test_text = f"{results['test_map']:.2f}" if results["test_map"] is not None else "n/a"
    say(
        f"done in {results['train_seconds']:.0f}s | best epoch {results['best_epoch']} | "
        f"valid mAP {results['valid_map']:.2f} | test mAP {test_text} | run folder {run.path}"
    )
    return run


def _completed_epochs(run: RunFolder) -> int:
    return run.load_checkpoint(mmap=True)["meta"]["epoch"] if run.file(CHECKPOINT).is_file() else 0


def _record_failure(run: RunFolder, exc: BaseException) -> str:
    """Status and log of a run that ended on an error (or a second Ctrl-C, which stops at once); returns the
    line for the user: what happened and what the run folder now allows."""
    if isinstance(exc, KeyboardInterrupt):
        state, reason = "interrupted", "stopped at once (a second Ctrl-C)"
    else:
        state, reason = "failed", one_line(exc)
    # a non-finite loss would come back on resuming (training is deterministic): its message says what to do
    line = reason if isinstance(exc, NonFiniteLoss) else f"{reason}; {_what_now(run)}"
    Reporter(run.file(LOG))(f"{state}: {line}", console=False)
    run.write_status(state, reason=reason, epoch=_completed_epochs(run))
    return line


def _what_now(run: RunFolder) -> str:
    """What the run folder allows after a failure: resuming from its last complete epoch, or starting anew."""
    completed = _completed_epochs(run)
    if completed:
        return f"the run keeps epoch {completed}: remove the cause, then `wsml train --resume {run.path}`"
    return f"no epoch completed: remove {run.path} and start again"


def train(config: TrainConfig, source: DataSource, stop: StopRequest | None = None) -> RunFolder:
    """Train a new run: keep the best epoch's weights, evaluate the test split, and write the run folder."""
    run = RunFolder.check_new(Path(config.out) if config.out else default_run_dir(source.name, config.scheme))
    return _run(set_up(config, source, run), stop, None)


def resume(run_dir: Path, epochs: int | None = None, stop: StopRequest | None = None) -> RunFolder | None:
    """Continue an interrupted run from its last complete epoch, with its saved configuration (and optionally
    more epochs). Returns None, after saying so, when the run is already finished."""
    run = RunFolder.for_resume(run_dir)
    config = run.config()
    extended = epochs is not None and epochs > config.epochs
    if epochs is not None and epochs < config.epochs:
        raise WsmlError(f"--epochs {epochs}: the run has {config.epochs}; resuming can only add epochs")
    if extended:
        config = apply_layer(config, {"epochs": epochs}, "cli (--resume)").validate()
    checkpoint = run.load_checkpoint()
    completed = checkpoint["meta"]["epoch"]
    if run.file(RESULTS).is_file() and not extended:
        status = run.results().get("status", "finished")
        print(f"{run.path} is {status} after {completed} epochs; nothing to resume (a larger --epochs trains on)")
        return None
    source = resolve_source(config.dataset, config.data, config.csv, config.images)
    setup = set_up(config, source, run, resumed=checkpoint["meta"])
    setup.say(f"resuming {run.path} after epoch {completed} of {config.epochs}")
    return _run(setup, stop, checkpoint)
