"""`wsml train`: CSV -> dataset -> DataLoaders -> Learner(+callbacks) -> run folder.

A run goes through four steps: `set_up` (data, model, run folder: setup.py), `build_learner` (every stage's
data, the callbacks and the Learner: learner.py), `fit` (the stages, from the run's first incomplete epoch) and
`score` (the test split, with the best weights). `train` starts a run and `resume` continues one; both record
in the run folder how the run ended.
"""

from __future__ import annotations

import time
from pathlib import Path

from wsml_fast.core.distributed import decided_together, lost_a_process, wait_for_main
from wsml_fast.core.errors import WsmlError, one_line
from wsml_fast.core.process import Process, launched
from wsml_fast.core.report import Reporter
from wsml_fast.data.loaders import split_dataset
from wsml_fast.data.sources import DatasetFiles, resolve_source
from wsml_fast.learning.contract import RunState, epoch_score, kept_weights
from wsml_fast.model.decisions import ThresholdRule
from wsml_fast.model.evaluation import Scoring, evaluate_split, fit_split_thresholds
from wsml_fast.model.modelfile import ModelFile
from wsml_fast.model.scoring import evaluation_bs
from wsml_fast.training.callbacks import NonFiniteLoss
from wsml_fast.training.config import TrainConfig, apply_layer
from wsml_fast.training.continuity import check_launch, check_settings
from wsml_fast.training.learner import build_learner, fit
from wsml_fast.training.report import write_report
from wsml_fast.training.runfolder import CHECKPOINT, REPORT, RESULTS, RunFolder, default_run_dir
from wsml_fast.training.setup import Setup, set_up
from wsml_fast.training.stopping import RunInterrupted, StopRequest
from wsml_fast.training.tracking import RunTracking


def fit_thresholds_at_end(setup: Setup, best: ModelFile, scoring: Scoring) -> ModelFile:
    """Fit the per-class thresholds on the valid split with the best weights (`best`, already in `setup.model`),
    by the run's rule; write them into model.pth and thresholds.csv and say which classes could not be fitted."""
    table = setup.table
    valid = split_dataset(table, "valid", setup.config.img_size)
    fitted = fit_split_thresholds(setup.model, valid, ThresholdRule.parse(setup.config.thresholds), scoring)
    for note in fitted.notes(table.classes):
        setup.say(note)
    model = best.with_thresholds(fitted.values, str(fitted.rule))
    setup.run.save_decisions(model, fitted.csv_text(table.classes))
    return model


def score(setup: Setup, history: list[dict], started: float, test: bool = True) -> dict:
    """results.json of a run: its best epoch and, by the process that writes, the thresholds fitted with that
    epoch's weights and the test split scored with them."""
    config, table = setup.config, setup.table
    wait_for_main()  # process 0 wrote the best weights
    best_model = setup.run.model_file()
    setup.model.load_state_dict(best_model.weights)
    best = RunState(history).best()
    results = {
        "best_epoch": best["epoch"],
        "valid_map": epoch_score(best),  # of the weights kept: the raw ones, or their average (--ema)
        "weights": kept_weights(best),
        "test_map": None,
        "map_convention": config.map_convention,
        "thresholds": config.thresholds,
        "classes": table.classes,
        "img_size": config.img_size,
        "weights_origin": setup.origin,
        "device": setup.device.type,
        "precision": setup.precision,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    if not setup.process.writes:
        return results
    scoring = Scoring(setup.precision, setup.device, evaluation_bs(config.bs), config.workers)
    model = fit_thresholds_at_end(setup, best_model, scoring)
    if test and len(table.rows("test")):
        test_ds = split_dataset(table, "test", config.img_size)
        evaluation = evaluate_split(
            setup.model, test_ds, table.classes, model.thresholds, model.threshold_rule, config.map_convention, scoring
        )
        results.update(test_map=evaluation.map.map, test_per_class=evaluation.map.per_class)
        results.update(test_skipped=evaluation.map.skipped, test_f1=evaluation.f1_family())
        for line in evaluation.summary():
            setup.say(f"test {line}")
    elif test:
        setup.say("note: no test rows: test mAP not computed")
    return results


def _run(
    setup: Setup,
    stop: StopRequest | None,
    checkpoint: dict | None,
    callbacks: list | None = None,
    test: bool = True,
    tags: dict[str, str] | None = None,
) -> RunFolder:
    """Build, fit and score, recording in the run folder (and its trackers) how the run ended: finished,
    interrupted or failed. `callbacks` join the Learner's (wsml tune reports to its trial); `test=False` leaves the
    test split alone; `tags` label the run in its trackers (wsml tune: the study's run and the trial)."""
    run, say, started = setup.run, setup.say, time.perf_counter()
    completed = checkpoint["meta"]["epoch"] if checkpoint else 0
    history = checkpoint["meta"]["history"] if checkpoint else []
    tracking = RunTracking.open(setup, history, tags)
    run.write_status("running", epoch=completed)
    try:
        learn, data = build_learner(setup, stop, history, [*(callbacks or []), tracking])
        ended = fit(learn, data, setup, stop, checkpoint)
        history = learn.run_state.history
        if ended == "interrupted":
            message = (
                f"{stop.name}: stopped in epoch {len(history) + 1}; the checkpoint of epoch {len(history)} is kept; "
                f"continue with: {resume_command(run, setup.process)}"
            )
            say(message)
            run.write_status("interrupted", reason=stop.name, epoch=len(history))
            raise RunInterrupted(message, stop.exit_code)
        results = score(setup, history, started, test)
        results["status"] = "finished" if ended is None else f"finished: {ended}"
        run.write_results(results)
        _write_report(setup)
        tracking.finish(results)
    except RunInterrupted:
        tracking.close("interrupted")
        raise
    except BaseException as exc:
        if setup.process.parallel and lost_a_process(exc):  # a collective failed: another process is gone
            exc = WsmlError(
                f"process {setup.process.rank}: another process of this data-parallel run stopped (see its error)"
            )
        line = _record_failure(run, exc, setup.process)
        tracking.close("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        if isinstance(exc, WsmlError):
            raise type(exc)(line) from None  # its own kind (a tuner tells a trial's failure by it), one line
        raise
    run.write_status("finished", epoch=len(history))
    tracking.close("finished")
    test_text = f"{results['test_map']:.2f}" if results["test_map"] is not None else "n/a"
    weights = f" ({results['weights']} weights)" if setup.config.averages else ""
    say(
        f"done in {results['train_seconds']:.0f}s | best epoch {results['best_epoch']}{weights} | "
        f"valid mAP {results['valid_map']:.2f} | test mAP {test_text} | run folder {run.path}"
    )
    return run


def _write_report(setup: Setup) -> None:
    """report.html of a finished run, by the process that writes; the run is recorded whatever happens here, so a
    failure costs the page alone (one warning line)."""
    if not setup.process.writes:
        return
    try:
        write_report(setup.run.path, setup.table)
    except Exception as exc:  # noqa: BLE001 - any failure of the page: the finished run stands
        setup.say(f"warning: {REPORT} not written ({one_line(exc)}); `wsml report {setup.run.path}` tries again")


def _completed_epochs(run: RunFolder) -> int:
    return run.load_checkpoint(mmap=True)["meta"]["epoch"] if run.file(CHECKPOINT).is_file() else 0


def _record_failure(run: RunFolder, exc: BaseException, process: Process) -> str:
    """Status and log of a run that ended on an error (or a second Ctrl-C, which stops at once); returns the
    line for the user: what happened and what the run folder now allows."""
    if isinstance(exc, KeyboardInterrupt):
        state, reason = "interrupted", "stopped at once (a second Ctrl-C)"
    else:
        state, reason = "failed", one_line(exc)
    # a non-finite loss would come back on resuming (training is deterministic): its message says what to do
    line = reason if isinstance(exc, NonFiniteLoss) else f"{reason}; {_what_now(run, process)}"
    run.reporter()(f"{state}: {line}", console=False)
    run.write_status(state, reason=reason, epoch=_completed_epochs(run))
    return line


def resume_command(run: RunFolder, process: Process) -> str:
    """The command that continues `run`: under the same kind of launch when it is data-parallel."""
    if process.parallel:
        return f"torchrun [the same launch options] -m wsml_fast train --resume {run.path}"
    return f"wsml train --resume {run.path}"


def _what_now(run: RunFolder, process: Process) -> str:
    """What the run folder allows after a failure: resuming from its last complete epoch, or starting anew."""
    completed = _completed_epochs(run)
    if completed:
        return f"the run keeps epoch {completed}: remove the cause, then `{resume_command(run, process)}`"
    return f"no epoch completed: remove {run.path} and start again"


def train(
    config: TrainConfig,
    source: DatasetFiles,
    stop: StopRequest | None = None,
    callbacks: list | None = None,
    test: bool = True,
    process: Process | None = None,
    tags: dict[str, str] | None = None,
) -> RunFolder:
    """Train a new run: keep the best epoch's weights, evaluate the test split (unless `test` is False), and
    write the run folder. `process` is the command's (by default: this process as launched); `tags` label the
    run in its trackers (`--log`)."""
    process = process or launched()
    path = Path(config.out) if config.out else default_run_dir(source.name, config.scheme)
    with decided_together(process):  # every process checks the folder; nothing is written in it yet
        run = RunFolder.check_new(path, process.writes)
    try:
        with decided_together(process):  # process 0 claims the folder and writes it
            setup = set_up(config, source, run, process)
        return _run(setup, stop, None, callbacks, test, tags)
    finally:
        run.release()


def resume(
    run_dir: Path, epochs: int | None = None, stop: StopRequest | None = None, process: Process | None = None
) -> RunFolder | None:
    """Continue an interrupted run from its last complete epoch, with its saved configuration (and optionally
    more epochs). Returns None, after saying so, when the run is already finished. `process` is the command's
    (by default: this process as launched). The run folder is held from the first step to the last."""
    process = process or launched()
    run = RunFolder(run_dir, process.writes)  # (what `release` lets go, however far the claim got)
    try:
        with decided_together(process):  # process 0 claims the folder
            run = RunFolder.for_resume(run_dir, process.writes)
        with decided_together(process):  # the checks of what the run may continue on, and its set-up
            resumed = _resume_setup(run, epochs, process)
        return None if resumed is None else _run(resumed[0], stop, resumed[1])
    finally:
        run.release()


def _resume_setup(run: RunFolder, epochs: int | None, process: Process) -> tuple[Setup, dict] | None:
    """The resumed run's set-up and its checkpoint, once the run is found fit to continue; None (said) when it is
    finished."""
    config = run.config()
    checkpoint = run.load_checkpoint()
    check_settings(run, config, checkpoint["meta"])
    check_launch(run, checkpoint["meta"], process)
    extended = epochs is not None and epochs > config.epochs
    if epochs is not None and epochs < config.epochs:
        raise WsmlError(f"--epochs {epochs}: the run has {config.epochs}; resuming can only add epochs")
    if extended:
        config = apply_layer(config, {"epochs": epochs}, "cli (--resume)").validate()
    completed = checkpoint["meta"]["epoch"]
    say = Reporter(speaks=process.writes)  # the console; the run's log once it is set up
    if run.file(RESULTS).is_file() and not extended:
        status = run.results().get("status", "finished")
        say(f"{run.path} is {status} after {completed} epochs; nothing to resume (a larger --epochs trains on)")
        return None
    source = resolve_source(config.dataset, config.data, config.csv, config.images, say)
    setup = set_up(config, source, run, process, resumed=checkpoint["meta"])
    setup.say(f"resuming {run.path} after epoch {completed} of {config.total_epochs}")
    return setup, checkpoint
