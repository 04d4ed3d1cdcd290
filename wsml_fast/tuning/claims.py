"""How the processes of one study share it without repeating themselves: each trial draws from its own seed, and
each trial claims its place among `--trials` through the storage.

A sampler seeded once per process replays that process's start-up draws in every process and every continuation
of the study (a 4-trial study shared by 2 processes tried 2 distinct settings); a trial's number is unique in the
storage, so seeding each trial's draws from `--seed` and its number gives every trial its own draws, and the same
ones again for the same study.

Counting the finished trials before starting one is a race (two processes see 3 of 4 done and each starts one).
A trial's number is handed out by the storage in one order for every process, so a trial runs only when the trials
numbered before it, finished or running or queued, leave room for it under `--trials`: every process reaches the
same answer for every trial, whatever the interleaving. A trial without room is given back: failed and marked
`surplus`, it is left out of the count, the trials table and the sampler's history.

A trial its process left running when killed keeps its place until another process fails it. Whether its process
still lives is decided by a lock it held (core/lock.py), which the kernel drops whatever way the process dies:
every `wsml tune` process holds a lock file of its own from before its first trial until after the study recorded
how its last one ended, and each trial names it. A process id would not do (reused, or process 1 of every
container), and nor would a trial's run folder lock, let go before Optuna records the trial's end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from wsml_fast.core import lock

SURPLUS = "surplus"  # the user attribute of a trial given back: the study had no room for it
DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
HOLDER, HOLDERS = "holder", ".holders"  # a trial's user attribute: its process's lock file, kept in TUNE_DIR/.holders
UNNAMED_SECONDS = 60  # a trial names its holder as it starts: one that named none for this long lost its process


class TrialSeededTPE(BaseSampler):
    """Optuna's TPE sampler, seeded anew for each trial from the study's seed and the trial's number."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._tpe = TPESampler(seed=seed)

    def trial_seed(self, number: int) -> int:
        return int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe = TPESampler(seed=self.trial_seed(trial.number))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial takes one of the study's `--trials`: not one stopped by an interruption (it runs again as a
    new trial) nor one given back."""
    return not (trial.user_attrs.get("interrupted") or trial.user_attrs.get(SURPLUS))


def finished(study: optuna.Study) -> int:
    """Trials that count toward `--trials`: completed, pruned or failed."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False, states=DONE))


def has_room(study: optuna.Study, number: int, total: int) -> bool:
    """Whether trial `number` fits under `total`: the trials numbered before it that count (finished, running, or
    queued to run) leave room for it."""
    before = [t for t in study.get_trials(deepcopy=False) if t.number < number and counts(t)]
    return len(before) < total


@contextlib.contextmanager
def holding(folder: Path) -> Iterator[Path]:
    """A lock file in `folder`'s .holders that this process holds for the block (its trials name it), removed after:
    no other process ever claims it, and a missing one is held by no one."""
    path = Path(folder) / HOLDERS / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock.claim(path)
    try:
        yield path
    finally:
        lock.release(path)
        path.unlink(missing_ok=True)


def abandoned(trial: FrozenTrial) -> bool:
    """Whether a trial marked running lost its process: the lock file it names is held by no live process of this
    host (another host's locks cannot be seen from here, nor any on a file system without locks: such trials are
    left alone), or it named none although it started over a minute ago."""
    holder = trial.user_attrs.get(HOLDER)
    if holder is None:
        started = trial.datetime_start or datetime.now()
        return datetime.now() - started > timedelta(seconds=UNNAMED_SECONDS)
    return trial.user_attrs.get("host") == socket.gethostname() and lock.probe(Path(holder)) is False
