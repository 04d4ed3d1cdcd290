"""`wsml tune`: search the scheme, learning rate, batch size and each scheme's own settings on Optuna.

Every trial is an ordinary `wsml train` run folder inside TUNE_DIR, trained without scoring its test split:
trials are compared by valid mAP alone (TPE sampler; the median or successive-halving pruner reads the valid
mAP after every epoch), and the test split is scored once, for the best trial, at the end. The study lives in
Optuna's storage: by default a journal file in TUNE_DIR, so no server is needed and running the same command
again continues the study; several `wsml tune` processes given the same `--study` and a shared `--storage` (a
journal file on a shared disk, or a database URL) cooperate on one study through Optuna's own locking.
`--trials` is the study's total, counted over every process: each trial claims its place through the storage, and
draws its settings from its own seed (`claims.py`).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from wsml_fast.core.atomic import write_text
from wsml_fast.core.errors import WsmlError, one_line
from wsml_fast.core.process import Process
from wsml_fast.core.report import Reporter
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.inference.evaluate import evaluate
from wsml_fast.inference.trained import load_model
from wsml_fast.learning.contract import WsmlCallback, epoch_score
from wsml_fast.schemes import get_scheme
from wsml_fast.schemes.declaration import Choice, Range
from wsml_fast.training.config import TrainConfig, apply_layer, with_scheme_defaults
from wsml_fast.training.runfolder import RunFolder, csv_text
from wsml_fast.training.stopping import RunInterrupted, StopRequest
from wsml_fast.tuning.claims import HOLDER, SURPLUS, TrialSeededTPE, abandoned, finished, has_room, holding
from wsml_fast.tuning.tracking import StudyTracking

JOURNAL, TRIALS, BEST, BEST_RESULT, PLOT = "study.journal", "trials.csv", "best.yaml", "best.json", "tune.png"
SPACE = "search_space"  # the study's user attribute: the schemes and ranges it searches
ON_REQUEST = ("mix", "mix_p", "mix_n", "ema")  # general settings `--search` may add, searched by no default


def default_space(base: TrainConfig) -> dict[str, Range | Choice]:
    """lr around the base's (a decade each way, log-uniform) and the batch size halved, kept or doubled."""
    return {
        "lr": Range(base.lr / 10, base.lr * 10, log=True),
        "bs": Choice((max(1, base.bs // 2), base.bs, base.bs * 2)),
    }


def read_space(path: Path) -> dict[str, Range | Choice]:
    """Search ranges from YAML: `name: {low: L, high: H[, log: true][, integer: true]}` or `name: [choices]`."""
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise WsmlError(f"--search {path}: not a readable YAML file ({exc.__class__.__name__})") from None
    if not isinstance(document, dict):
        raise WsmlError(
            f"--search {path}: give a mapping of setting names to ranges, such as `lr: {{low: 1e-4, high: 1e-2}}`"
        )
    space: dict[str, Range | Choice] = {}
    for name, value in document.items():
        if isinstance(value, list) and value:
            space[name] = Choice(tuple(value))
        elif (
            isinstance(value, dict)
            and {"low", "high"} <= set(value)
            and set(value) <= {"low", "high", "log", "integer"}
        ):
            space[name] = _range(path, name, value)
        else:
            raise WsmlError(f"--search {path}: {name}: give a list of choices or {{low: L, high: H[, log: true]}}")
    return space


def _range(path: Path, name: str, value: dict) -> Range:
    """A numeric range of the search file, checked before any trial starts."""
    try:
        low, high = float(value["low"]), float(value["high"])
    except (TypeError, ValueError):
        raise WsmlError(f"--search {path}: {name}: low and high must be numbers") from None
    log = bool(value.get("log"))
    if not low <= high or (log and low <= 0):
        raise WsmlError(f"--search {path}: {name}: need low <= high{' and low > 0 (log)' if log else ''}")
    return Range(low, high, log, bool(value.get("integer")))


def scheme_ranges(base: TrainConfig, space: dict[str, Range | Choice]) -> dict[str, Range | Choice]:
    """What a trial of `base.scheme` searches: the default ranges, the scheme's own, then `--search`'s (which may
    add the settings searched on request, such as `mix: [null, logicmix]` or `ema: [null, 0.999]`)."""
    ranges = {**default_space(base), **get_scheme(base.scheme).search}
    return {**ranges, **{k: v for k, v in space.items() if k in ranges or k in ON_REQUEST}}


def check_search(path: Path, space: dict[str, Range | Choice], bases: dict[str, TrainConfig]) -> None:
    """`--search` names only settings some searched scheme searches, and gives values a run could use (each choice,
    each end of a range, checked as `wsml train` checks them): a wrong one would fail every trial."""
    searchable = {name for base in bases.values() for name in scheme_ranges(base, {})} | set(ON_REQUEST)
    unknown = sorted(set(space) - searchable)
    if unknown:
        raise WsmlError(
            f"--search {path}: {', '.join(unknown)}: not searched by --schemes {','.join(bases)} "
            f"(searchable: {', '.join(sorted(searchable))})"
        )
    for base in bases.values():
        for name, searched in scheme_ranges(base, space).items():
            if name not in space:
                continue
            if isinstance(searched, Choice):
                values = searched.values
            else:
                values = (int(searched.low), int(searched.high)) if searched.integer else (searched.low, searched.high)
            for value in values:
                try:
                    with_scheme_defaults(apply_layer(base, {name: value}, "tune")).validate()
                except WsmlError as exc:
                    raise WsmlError(f"--search {path}: {name}: {value!r} cannot be used ({exc})") from None


def space_record(bases: dict[str, TrainConfig], space: dict[str, Range | Choice]) -> dict[str, Any]:
    """The study's search space as its storage keeps it (JSON): the schemes and each one's ranges."""
    ranges = {scheme: {n: r.to_json() for n, r in scheme_ranges(b, space).items()} for scheme, b in bases.items()}
    return json.loads(json.dumps({"schemes": list(bases), "ranges": ranges}))


def keep_space(study: optuna.Study, record: dict[str, Any], where: str) -> None:
    """Record the study's search space when it has none; refuse another one (Optuna cannot search one setting
    over two ranges in one study), naming the difference, before any trial is made."""
    before = study.user_attrs.get(SPACE)
    if before is None:
        study.set_user_attr(SPACE, record)
        return
    if before == record:
        return
    new_study = "rerun with the study's own options, or start a new study with --study NAME or another --out"
    if before["schemes"] != record["schemes"]:
        difference = f"--schemes {','.join(before['schemes'])}, not {','.join(record['schemes'])}"
    else:
        scheme, name = next(
            (scheme, name)
            for scheme, ranges in record["ranges"].items()
            for name in {*ranges, *before["ranges"][scheme]}
            if ranges.get(name) != before["ranges"][scheme].get(name)
        )
        was, now = (_described(ranges[scheme].get(name)) for ranges in (before["ranges"], record["ranges"]))
        difference = f"{name} of {scheme} over {was}, not {now} (--search or --recipe)"
    raise WsmlError(f"study '{study.study_name}' in {where} searches {difference}; {new_study}")


def _described(searched: dict[str, Any] | None) -> str:
    """A recorded range in words: `[16, 32]`, `0.0001 to 0.01 (log)`."""
    if searched is None:
        return "nothing"
    if "choices" in searched:
        return str(searched["choices"])
    return f"{searched['low']:g} to {searched['high']:g}{' (log)' if searched['log'] else ''}"


def suggest(trial: optuna.Trial, name: str, space: Range | Choice) -> Any:
    if isinstance(space, Choice):
        values = list(space.values)
        index = trial.suggest_categorical(name, list(range(len(values)))) if _unhashable(values) else None
        return values[index] if index is not None else trial.suggest_categorical(name, values)
    if space.integer:
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(name, space.low, space.high, log=space.log)


def _unhashable(values: list) -> bool:
    return any(isinstance(v, list | dict) for v in values)  # Optuna's categories must be plain values


@dataclass
class Tuner:
    """One `wsml tune` process: the fixed settings, the search space, the study and its folder."""

    base_for: Callable[[str], TrainConfig]  # a scheme's settings from defaults, its recipe family and the CLI
    source: DatasetFiles
    schemes: list[str]
    space: dict[str, Range | Choice]  # overrides of the default and registry ranges
    folder: Path
    study: optuna.Study
    say: Callable[[str], None] = field(default_factory=Reporter)
    stop: StopRequest | None = None  # set by `run_study`
    process: Process | None = None  # the command's (by default: this process as launched)
    tracking: StudyTracking | None = None  # the study's MLflow run (`--log mlflow`), set by `run_study`
    trials: int = 0  # the study's total (`--trials`), set by `run_study`
    holder: Path | None = None  # the lock file this process holds while it runs trials, set by `run_study`

    def ranges(self, scheme: str) -> dict[str, Range | Choice]:
        return scheme_ranges(self.base_for(scheme), self.space)

    def settings(self, trial: optuna.Trial) -> dict[str, Any]:
        scheme = trial.suggest_categorical("scheme", self.schemes)
        return {"scheme": scheme, **{name: suggest(trial, name, r) for name, r in self.ranges(scheme).items()}}

    def config(self, settings: dict[str, Any], run: Path) -> TrainConfig:
        layer = {**settings, "out": str(run)}
        return with_scheme_defaults(apply_layer(self.base_for(settings["scheme"]), layer, "tune")).validate()

    def objective(self, trial: optuna.Trial) -> float:
        """Train one trial's run. Its own failures (settings no run can use, a non-finite loss, out of memory)
        fail the trial and the study goes on; any other error (the data, the backbone's weights, the disk)
        would fail every trial alike, so it ends the study with its one line."""
        import torch

        from wsml_fast.training.callbacks import NonFiniteLoss
        from wsml_fast.training.run import train

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr(HOLDER, str(self.holder))  # first: until it is named, the trial may look abandoned
        if not has_room(self.study, trial.number, self.trials):
            trial.set_user_attr(SURPLUS, True)  # other processes took the study's last trials first
            self.study.stop()
            raise TrialFailed(f"no room: the study has its {self.trials} trials")
        settings = self.settings(trial)
        run = self.folder / f"trial-{trial.number:04d}"
        attributes = (("run", str(run)), ("pid", os.getpid()), ("settings", settings))
        for key, value in attributes:
            trial.set_user_attr(key, value)
        report = ReportToTrial(trial)
        try:
            config = self.config(settings, run)
        except WsmlError as exc:
            raise self._failed(trial, exc) from None
        try:
            tags = self.tracking.trial_tags(trial.number) if self.tracking else None
            train(config, self.source, self.stop, callbacks=[report], test=False, process=self.process, tags=tags)
        except RunInterrupted:
            trial.set_user_attr("interrupted", True)
            self.study.enqueue_trial(trial.params, skip_if_exists=False)  # the next `wsml tune` runs it again
            raise
        except (NonFiniteLoss, torch.OutOfMemoryError) as exc:
            raise self._failed(trial, exc) from None
        if report.pruned:
            raise optuna.TrialPruned(report.pruned)
        return RunFolder(run).results()["valid_map"]

    @staticmethod
    def _failed(trial: optuna.Trial, exc: BaseException) -> TrialFailed:
        trial.set_user_attr("failure", one_line(exc))
        return TrialFailed(one_line(exc))


class TrialFailed(Exception):
    """A trial that failed on its own (recorded as failed; the study goes on)."""


class ReportToTrial(WsmlCallback):
    """Give the trial each epoch's score (`epoch_score`: its valid mAP); end the run when the pruner says the trial
    is clearly worse."""

    order = 75  # after the run log (70) has the epoch's row and its checkpoint (72) is written

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pruned: str | None = None  # why the trial was pruned, if it was

    def after_epoch(self) -> None:
        row = self.run_state.history[-1]
        self.trial.report(epoch_score(row), step=row["epoch"])
        if self.trial.should_prune():
            self.pruned = f"pruned after epoch {row['epoch']} (valid mAP {epoch_score(row):.2f})"
            self.end_fit(self.pruned)


def first_prunable_epoch(epochs: int) -> int:
    """No trial is judged before half its epochs (at least 2): the large-loss schemes act from epoch 2 on, and a
    lower learning rate starts slower without ending worse; judged at epoch 1, a demo study pruned 27 of 30
    trials there, and the schemes that need time lost to whichever started fastest."""
    return max(2, epochs // 2)


def check_storage(storage: str | None) -> None:
    """A journal file path must name a file in an existing folder (checked before the tune folder is made)."""
    if storage is None or "://" in storage:
        return
    path = Path(storage)
    if path.is_dir():
        raise WsmlError(f"--storage {storage}: is a folder; give a journal file, such as {path / JOURNAL}")
    if not path.parent.is_dir():
        raise WsmlError(f"--storage {storage}: the folder {path.parent} does not exist; create it or give another path")


def open_study(
    folder: Path,
    name: str,
    storage: str | None,
    seed: int,
    pruner: str,
    epochs: int,
    space: dict[str, Any] | None = None,
) -> optuna.Study:
    """The study, created or continued: a journal file in the tune folder unless `storage` names another (a
    journal file path, or a database URL such as sqlite:///... or postgresql://...). A continued study must search
    the same `space` (`space_record`); then trials that processes of this host left running when killed are failed
    and queued again. The pruner compares trials from `first_prunable_epoch(epochs)` on, once 5 trials have
    finished."""
    from optuna.storages import JournalStorage, get_storage
    from optuna.storages.journal import JournalFileBackend

    target = storage or str(folder / JOURNAL)
    start = first_prunable_epoch(epochs)
    pruners = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=start),
        "halving": optuna.pruners.SuccessiveHalvingPruner(min_resource=start),
    }
    try:
        backend = get_storage(target) if "://" in target else JournalStorage(JournalFileBackend(target))
        study = optuna.create_study(
            study_name=name,
            storage=backend,
            sampler=TrialSeededTPE(seed),
            pruner=pruners[pruner],
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as exc:  # noqa: BLE001 - a database that cannot be reached, a URL without a driver, ...
        raise WsmlError(f"--storage {target}: cannot open the study ({one_line(exc)})") from None
    if space is not None:
        keep_space(study, space, target)
    fail_abandoned(study, backend)
    return study


def fail_abandoned(study: optuna.Study, storage: BaseStorage) -> None:
    """Trials left running by a process that is gone (killed; `claims.abandoned`): failed, and queued again, by
    whichever process comes first (the storage refuses the others' change of a finished trial). A study offers no
    way to change a trial it did not hand out: the study's storage does it, through its public methods."""

    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not abandoned(trial):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another process failed it first, and queued it again
        study.enqueue_trial(trial.params, skip_if_exists=False)
        if HOLDER in trial.user_attrs:  # its process is gone: no one will hold its lock file again
            Path(trial.user_attrs[HOLDER]).unlink(missing_ok=True)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(SURPLUS):
            continue
        rows.append(
            {
                "trial": trial.number,
                "state": "interrupted" if trial.user_attrs.get("interrupted") else trial.state.name.lower(),
                "valid_map": trial.value,
                **trial_settings(trial),
                "run": trial.user_attrs.get("run"),
                "note": trial.user_attrs.get("failure") or _pruned_note(trial),
            }
        )
    return rows


def trial_settings(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's settings as its run used them: a choice among lists (GR's schedules) is its value, not the
    index Optuna drew (its categories must be plain values)."""
    return trial.user_attrs.get("settings") or trial.params


def _pruned_note(trial: optuna.trial.FrozenTrial) -> str:
    steps = trial.intermediate_values
    return f"pruned after epoch {max(steps)}" if trial.state == TrialState.PRUNED and steps else ""


def write_trials(folder: Path, rows: list[dict[str, Any]]) -> None:
    write_text(folder / TRIALS, csv_text(rows))


def write_best(tuner: Tuner) -> dict[str, Any] | None:
    """best.yaml (a recipe that `wsml train --recipe` reruns as is) and best.json (its valid and test mAP)."""
    study = tuner.study
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    run = RunFolder(Path(best.user_attrs["run"]))
    config = run.config()
    recipe = {k: v for k, v in config.values().items() if k != "out"}
    header = f"# wsml tune: trial {best.number} of study '{study.study_name}', valid mAP {best.value:.2f}\n"
    write_text(tuner.folder / BEST, header + yaml.safe_dump(recipe, sort_keys=False))
    scored = len(_test_rows(tuner))
    test = (
        evaluate(load_model(run.path), tuner.source, "test", config.map_convention, tuner.process) if scored else None
    )
    result = {"trial": best.number, "run": str(run.path), "valid_map": best.value, "settings": trial_settings(best)}
    result["test_map"] = None if test is None else test.map.map
    result["test_f1"] = None if test is None else test.f1_family()
    write_text(tuner.folder / BEST_RESULT, json.dumps(result, indent=2) + "\n")
    return result


def _test_rows(tuner: Tuner):
    from wsml_fast.data.table import load_table

    base = tuner.base_for(tuner.schemes[0])
    return load_table(tuner.source, base.valid_fraction, base.seed).rows("test")


def plot(folder: Path, rows: list[dict[str, Any]]) -> None:
    """tune.png: valid mAP of the finished trials against Delta and against lr, a colour per scheme."""
    import matplotlib
    from matplotlib.figure import Figure  # a figure of its own: no pyplot, so no process-wide backend to set

    done = [r for r in rows if r["valid_map"] is not None]
    schemes = sorted({r["scheme"] for r in done})
    colours = dict(zip(schemes, matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] * 3, strict=False))
    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    for axis, setting, label in ((axes[0], "delta_rel", "Delta (%)"), (axes[1], "lr", "learning rate")):
        for scheme in schemes:
            points = [(r[setting], r["valid_map"]) for r in done if r["scheme"] == scheme and r.get(setting)]
            if points:
                axis.scatter(*zip(*points, strict=True), label=scheme, color=colours[scheme])
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("valid mAP")
    axes[1].legend(fontsize=8)
    figure.suptitle("wsml tune: valid mAP of each trial")
    figure.tight_layout()
    from wsml_fast.core.atomic import atomic_write

    atomic_write(folder / PLOT, lambda handle: figure.savefig(handle, format="png", dpi=110))


def parse_duration(text: str) -> float:
    """`2h`, `30m`, `90s` or seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise WsmlError(f"--timeout {text!r}: give a positive duration such as 2h, 30m, 90s or a number of seconds")
    return seconds


def _line(trial: optuna.trial.FrozenTrial, count: int, total: int) -> str:
    settings = " ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial_settings(trial).items()
    )
    value = f"valid mAP {trial.value:.2f}" if trial.value is not None else trial.user_attrs.get("failure", "")
    state = "interrupted" if trial.user_attrs.get("interrupted") else trial.state.name.lower()
    note = _pruned_note(trial)
    return f"trial {trial.number} | {settings} | {value or note} | {state} ({count} of {total} done)"


def study_bar(count: int, total: int, width: int = 24) -> str:
    """`[#########---------------] 9/24`: the study's progress, put before each trial's line on a terminal."""
    filled = min(width, width * count // max(total, 1))
    return f"[{'#' * filled}{'-' * (width - filled)}] {count}/{total}"


def run_study(
    tuner: Tuner, trials: int, timeout: float | None, stop: StopRequest | None = None
) -> dict[str, Any] | None:
    """Run this process's share of the study up to `trials` finished trials (or the timeout), then write the
    trials table, the best recipe and its test mAP, and the figure. Returns best.json's content. With `--log
    mlflow`, the study has an MLflow run of its own, under which each trial's run is nested."""
    tuner.stop, tuner.trials = stop, trials
    tuner.tracking = tracking = StudyTracking.open(tuner, trials)
    try:
        with holding(tuner.folder) as tuner.holder:  # held until the study has recorded the end of every trial
            best = _optimize(tuner, trials, timeout)
    except BaseException as exc:
        tracking.close("interrupted" if isinstance(exc, RunInterrupted | KeyboardInterrupt) else "failed")
        raise
    tracking.finish(best, [tuner.folder / name for name in (BEST, BEST_RESULT, TRIALS, PLOT)])
    return best


def _optimize(tuner: Tuner, trials: int, timeout: float | None) -> dict[str, Any] | None:
    """The trials (each trial's end said, and its MLflow run marked), then the study's files."""
    done = finished(tuner.study)
    tuner.say(f"study '{tuner.study.study_name}': {done} of {trials} trials done; results in {tuner.folder}")

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A line per finished trial; stop when the study's total is reached, counting the trials other
        processes are running (so that together they run `trials`), or when asked to."""
        if trial.user_attrs.get(SURPLUS):
            return
        count = finished(study)
        tuner.say(
            f"{study_bar(count, trials)} {_line(trial, count, trials)}"
            if sys.stdout.isatty()
            else _line(trial, count, trials)
        )
        write_trials(tuner.folder, trial_rows(study))
        tuner.tracking.trial_done(trial)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if count + running >= trials or (tuner.stop is not None and tuner.stop()):
            study.stop()

    interrupted = None
    if done < trials:
        try:
            tuner.study.optimize(
                tuner.objective,
                n_trials=trials - done,
                timeout=timeout,
                catch=(TrialFailed,),
                callbacks=[after_trial],
            )
        except RunInterrupted as exc:
            interrupted = exc
    rows = trial_rows(tuner.study)
    write_trials(tuner.folder, rows)
    if any(r["valid_map"] is not None for r in rows):
        plot(tuner.folder, rows)
    if interrupted is not None:
        tuner.say("stopped; the interrupted trial runs again when the same `wsml tune` command is run again")
        raise interrupted
    best = write_best(tuner)
    if best is not None:
        test = "n/a" if best["test_map"] is None else f"{best['test_map']:.2f}"
        tuner.say(
            f"best: trial {best['trial']} | valid mAP {best['valid_map']:.2f} | test mAP {test} | recipe "
            f"{tuner.folder / BEST} (`wsml train --recipe {tuner.folder / BEST}` reruns it)"
        )
    return best
