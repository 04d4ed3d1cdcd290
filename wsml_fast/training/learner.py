"""The Learner of a run and its fit: callbacks, optimizers, and the stages trained from the first incomplete epoch.

`wsml_learner` is the one factory of a Learner with wsml's contract (run state, targets by item index, a
scheme's losses and callbacks); `build_learner` makes the run's on it, with the run's callbacks and data.

Each stage gets its own inputs, model part and optimizer (a new one, as Cole et al.'s fine-tuning phase has);
a stage after the first starts from the best epoch of the stage before, its weights and its schemes' state
both. A resumed run puts the checkpoint's state back just before its first stage trains.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
import torch
from fastai.callback.core import Callback, CancelEpochException
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper
from fastai.torch_core import params

from wsml_fast.core.distributed import (
    all_gather_varying,
    bare,
    shard,
    wait_for_main,
)
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.report import Reporter
from wsml_fast.data.loaders import check_train_batches, make_loader
from wsml_fast.learning.contract import RunState, SchemeState, TargetsCallback
from wsml_fast.model.evaluation import Scoring
from wsml_fast.model.metrics import MapMetric
from wsml_fast.model.scoring import AMP_DTYPES, evaluation_bs, predict_scores
from wsml_fast.schemes.build import SchemeParts, scheme_parts
from wsml_fast.training.accumulation import EpochGradientAccumulation
from wsml_fast.training.callbacks import (
    DeviceMixedPrecision,
    EarlyStopCallback,
    LossGuardCallback,
    RunLogCallback,
    SaveBestCallback,
    StopOnRequestCallback,
    TrainingLossCallback,
    TrainRecoveryCallback,
)
from wsml_fast.training.checkpoint import CheckpointCallback, restore
from wsml_fast.training.memorization import MemorizationCallback, sample_entries
from wsml_fast.training.mixing import mixing_callbacks
from wsml_fast.training.parallel import DataParallel, ShareValidLoss, check_global_batches
from wsml_fast.training.runfolder import SCHEME_STATE
from wsml_fast.training.setup import Setup
from wsml_fast.training.stages import IMAGES, StageData, stage_data, stages
from wsml_fast.training.stopping import StopRequest
from wsml_fast.training.weight_average import WeightAverageCallback

OPTIMIZERS = {  # what the reference implementations used: torch's optimizers, driven through fastai's wrapper
    "adam": partial(OptimWrapper, opt=partial(torch.optim.Adam, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "sgd": partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-3)),
}


def body_head_split(model: torch.nn.Module) -> list:
    return [params(model.body), params(model.head)]


def head_only(head: torch.nn.Module) -> list:
    return [params(head)]


class ResumableLearner(Learner):
    """fastai's Learner whose fit can begin at a later epoch of its schedule (a resumed run): the epochs before
    `first_epoch` raise no events at all (fastai's SkipToEpoch would still send them `after_epoch`), and the
    schedulers see the same epoch / n_epoch, hence bit for bit the same learning rates, as an uninterrupted fit."""

    first_epoch = 0

    def fit(self, *args, **kwargs) -> None:
        """fastai's fit; whatever ends it, an error too, the Learner holds its evaluation loss again after it."""
        try:
            super().fit(*args, **kwargs)
        finally:
            for callback in self.cbs:
                if isinstance(callback, TrainingLossCallback):
                    callback.restore()

    def _do_fit(self) -> None:
        for epoch in range(self.first_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)


def compile_in_place(model: torch.nn.Module, sample: torch.Tensor, say: Reporter) -> None:
    """torch.compile the model in place (its state-dict keys stay as they are), after a trial on a sample batch;
    where compiling fails, say so and train uncompiled. The trial runs in eval mode without gradients: it moves no
    batch-norm statistic and draws no dropout, so the model trains as if it had not been tried."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.compile(model)(sample)
    except Exception as exc:  # noqa: BLE001 - compilers fail in many ways; training goes on without
        say(f"note: --compile failed ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); running uncompiled")
        return
    finally:
        model.train(training)
    model.compile()
    say("model compiled with torch.compile")


def _diagnostics(setup: Setup, truth_known: bool) -> list:
    """Callbacks that need the truth of the training set: recovery mAP, and memorization when asked for."""
    config = setup.config
    if not truth_known:
        if config.track_memorization:
            raise WsmlError("--track-memorization needs truth.csv (the truth of the unobserved training entries)")
        return []
    if not setup.process.writes:  # diagnostics go to the run folder, which process 0 alone writes
        return []
    scoring = Scoring(setup.precision, setup.device, evaluation_bs(config.bs), config.workers)

    def recovery_map(model: torch.nn.Module, dataset) -> float:
        return scoring.score(model, dataset).result(None, config.map_convention).map

    callbacks = [TrainRecoveryCallback(recovery_map)]
    if config.track_memorization:
        entries = sample_entries(setup.train_labels, setup.table.train_truth(), seed=config.seed)
        every = max(1, setup.train_labels.n_rows // config.bs // 20)  # about 20 points per epoch
        callbacks.append(MemorizationCallback(*entries, every, setup.run))
    return callbacks


def wsml_learner(
    dls: DataLoaders,
    model: torch.nn.Module,
    parts: SchemeParts,
    cbs: Sequence[Callback] = (),
    history: list[dict] | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> ResumableLearner:
    """A Learner with wsml's contract on loaders whose batches are (inputs, item index) and whose datasets carry
    a `labels` store: `RunState` (from `history`), `TargetsCallback`, the scheme's parts (its evaluation loss as
    `loss_func`, its training loss swapped in while training, its callbacks) and `cbs`. `kwargs` go to fastai's
    Learner (opt_func, metrics, path, ...); `progress`: keep fastai's progress bar and table."""
    swap = [] if parts.evaluation_loss is None else [TrainingLossCallback(parts.loss, parts.evaluation_loss)]
    loss = parts.loss if parts.evaluation_loss is None else parts.evaluation_loss
    callbacks = [RunState(history), TargetsCallback(), *swap, *parts.callbacks, *cbs]
    learn = ResumableLearner(dls, model, loss_func=loss, cbs=callbacks, **kwargs)
    if not progress:
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None
    return learn


def build_learner(
    setup: Setup, stop: StopRequest | None = None, history: list[dict] | None = None, cbs: Sequence[Callback] = ()
) -> tuple[Learner, dict[str, StageData]]:
    """The callbacks, the data of every stage (by its inputs), and the run's Learner (set for the first stage),
    with `cbs` besides (wsml tune's report to its trial, tests' probes)."""
    config, model, device, run = setup.config, setup.model, setup.device, setup.run
    model.to(device)
    if device.type == "cuda" and setup.precision in AMP_DTYPES:
        model.use_channels_last()
    data = {stage.inputs: stage_data(setup, stage.inputs, stage.bs) for stage in stages(config)}
    for stage in stages(config):
        check_train_batches(data[stage.inputs].module, len(data[stage.inputs].train), stage.bs)
        if setup.process.parallel:
            check_global_batches(len(data[stage.inputs].train), stage.bs, setup.process.world_size)
    if config.compile and IMAGES in data:
        compile_in_place(model, next(iter(data[IMAGES].loaders.valid))[0][:2], setup.say)
    on_terminal = sys.stdout.isatty()
    average = (
        WeightAverageCallback(config.ema, model, setup.precision, config.map_convention) if config.averages else None
    )
    callbacks = [
        RunLogCallback(run.write_metrics, setup.say, print_lines=not on_terminal),
        SaveBestCallback(
            model,
            lambda state, epoch: run.save_model(setup.model_file(state, epoch)),
            run.save_scheme_state,
            average.averaged_weights if average else None,
        ),
        CheckpointCallback(run.save_checkpoint, model, setup.meta()),
        LossGuardCallback(config.lr, setup.say),
        *_diagnostics(setup, setup.table.truth is not None),
        *mixing_callbacks(setup),
    ]
    if average is not None:
        callbacks.append(average)
    if config.accumulate > 1:
        callbacks.append(EpochGradientAccumulation(config.accumulate))
    if stop is not None:
        callbacks.append(StopOnRequestCallback(stop))
    if setup.precision in AMP_DTYPES:
        callbacks.append(DeviceMixedPrecision(amp_mode=setup.precision))
    if config.early_stop:
        callbacks.append(EarlyStopCallback(drop=config.early_stop_drop))
    if config.sync_bn and device.type != "cuda":
        raise WsmlError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm works on GPU modules only")
    if setup.process.parallel:
        callbacks += [DataParallel(setup.process, sync_bn=config.sync_bn, cpu=device.type == "cpu"), ShareValidLoss()]
    elif config.sync_bn:
        setup.say("note: --sync-bn does nothing in a single process (it shares batch statistics between processes)")

    def score_train(module: torch.nn.Module) -> torch.Tensor:
        """Probabilities on every training input of the stage in progress (read when called, hence `learn`);
        in a data-parallel run each process scores its share and they exchange them."""
        plain = learn.run_state.stage.plain_train
        rows = shard(len(plain), setup.process.world_size, setup.process.rank)
        loader = make_loader(plain.subset(rows), evaluation_bs(config.bs), False, config.workers, device)
        probs = torch.from_numpy(predict_scores(bare(module), loader, setup.precision, device))
        everyone = torch.zeros(len(plain), probs.shape[1])
        everyone[all_gather_varying(torch.as_tensor(rows))] = all_gather_varying(probs)
        return everyone

    write = run.write_text if run.writes else None
    parts = scheme_parts(config, setup.table, setup.train_labels, write, setup.say, score_train)
    first = data[stages(config)[0].inputs]
    learn = wsml_learner(
        first.loaders,
        first.module,
        parts,
        [*callbacks, *cbs],
        history,
        progress=on_terminal and setup.process.writes,
        opt_func=OPTIMIZERS[config.opt],
        metrics=[MapMetric(config.map_convention)],
        path=run.path,
        model_dir=".",
        train_bn=False,
    )
    return learn, data


def _use_stage(learn: Learner, data: StageData) -> None:
    """Point the Learner at a stage's inputs and model part, with a new optimizer for its parameters."""
    learn.dls, learn.model = data.loaders, data.module
    learn.splitter = body_head_split if data.inputs == IMAGES else head_only
    learn.run_state.stage = data
    learn.opt = None
    learn.create_opt()


def _load_best(learn: Learner, setup: Setup) -> None:
    """The best epoch so far: its weights, and its schemes' state (stored labels, label estimates)."""
    wait_for_main()  # process 0 wrote them
    setup.model.load_state_dict(setup.run.model_file().weights)
    if setup.run.file(SCHEME_STATE).is_file():
        saved = setup.run.load_scheme_state()
        for callback in learn.cbs:
            if isinstance(callback, SchemeState):
                callback.load_state_dict(saved[type(callback).__name__])


def fit(
    learn: Learner,
    data: dict[str, StageData],
    setup: Setup,
    stop: StopRequest | None = None,
    checkpoint: dict | None = None,
) -> str | None:
    """Train the stages from the run's first incomplete epoch (a checkpoint's state goes back in first).
    Returns why training ended early (`interrupted`, or the early-stop reason), or None when every epoch ran."""
    config, state = setup.config, learn.run_state
    for index, stage in enumerate(stages(config)):
        if state.completed >= stage.end:
            continue
        _use_stage(learn, data[stage.inputs])
        if checkpoint is not None:
            restore(learn, setup.model, checkpoint, mid_stage=state.completed > stage.start)
            checkpoint = None
        if index > 0 and state.completed == stage.start:
            _load_best(learn, setup)  # the protocol: a stage starts from the best epoch of the stage before
        learn.first_epoch = state.completed - stage.start
        multiplied = config.head_lr_mult != 1
        lr = slice(stage.lr, stage.lr * config.head_lr_mult) if multiplied else stage.lr
        if config.schedule == "one-cycle":
            learn.fit_one_cycle(stage.epochs, lr)
        else:
            learn.fit(stage.epochs, lr)
        if stop is not None and stop():
            return "interrupted"
        if state.stop_reason:  # a callback ended the fit (early stop: ..., pruned after ...)
            setup.say(state.stop_reason)
            return state.stop_reason
    return None
