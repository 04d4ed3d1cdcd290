"""`python hooked_wsml.py wsml-arguments...` (or under `torchrun`): `wsml` with test hooks set by environment:

WSML_KILL_AT="EPOCH,BATCH[,RANK]"  SIGKILL the process (of that rank only, if given) at the given training
                                    batch (0-based) of the given epoch (from 1): a kill at a known instant.
WSML_PAUSE_AT="EPOCH,BATCH,FILE"     after that training batch, create FILE.reached and wait until FILE exists (at
                                    most a minute): the test acts while the run is known to be live, then lets it go.
WSML_DUMP_STATES=DIR                at the end of every fit, each process saves its schemes' checkpointed state
                                    to DIR/rank{R}.pt, to compare the processes of a data-parallel run.
WSML_TUNE_MEET="FILE,N"             `wsml tune`: a process's first trial (once it names its holder, before it claims its
                                    place) creates FILE.PID and waits until N such files exist (at most a minute): N
                                    processes are known to run trials of one study at once.
"""

import os
import signal
import sys
import time

import torch
from fastai.callback.core import Callback

import wsml_fast.training.run as train_module
import wsml_fast.tuning.study as study_module
from wsml_fast.cli import main
from wsml_fast.core.distributed import rank
from wsml_fast.learning.contract import SchemeState, checkpointed_states


class KillAt(Callback):
    order = 99

    def __init__(self, spec: str) -> None:
        numbers = [int(part) for part in spec.split(",")]
        self.epoch, self.batch, self.rank = (*numbers, None)[:3]

    def after_batch(self) -> None:
        here = self.learn.training and self.run_state.epoch == self.epoch and self.learn.iter == self.batch
        if here and self.rank in (None, rank()):
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAt(Callback):
    order = 99

    def __init__(self, spec: str) -> None:
        epoch, batch, self.file = spec.split(",", 2)
        self.epoch, self.batch = int(epoch), int(batch)

    def after_batch(self) -> None:
        if self.learn.training and self.run_state.epoch == self.epoch and self.learn.iter == self.batch:
            open(self.file + ".reached", "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(self.file) and time.monotonic() < deadline:
                time.sleep(0.05)


class DumpStates(Callback):
    order = 99

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def after_fit(self) -> None:
        torch.save(checkpointed_states(self.learn, SchemeState), os.path.join(self.folder, f"rank{rank()}.pt"))


build_learner = train_module.build_learner


def build_learner_with_hooks(setup, stop, history, cbs=()):
    hooks = []
    if os.environ.get("WSML_KILL_AT"):
        hooks.append(KillAt(os.environ["WSML_KILL_AT"]))
    if os.environ.get("WSML_PAUSE_AT"):
        hooks.append(PauseAt(os.environ["WSML_PAUSE_AT"]))
    if os.environ.get("WSML_DUMP_STATES"):
        hooks.append(DumpStates(os.environ["WSML_DUMP_STATES"]))
    return build_learner(setup, stop, history, [*cbs, *hooks])


train_module.build_learner = build_learner_with_hooks
has_room = study_module.has_room


def has_room_after_meeting_the_others(study, number, total):
    file, count = os.environ["WSML_TUNE_MEET"].split(",")
    mine = f"{file}.{os.getpid()}"
    if not os.path.exists(mine):
        open(mine, "w").close()
        deadline = time.monotonic() + 60
        folder, name = os.path.split(file)
        while sum(f.startswith(name + ".") for f in os.listdir(folder)) < int(count) and time.monotonic() < deadline:
            time.sleep(0.05)
    return has_room(study, number, total)


if os.environ.get("WSML_TUNE_MEET"):
    study_module.has_room = has_room_after_meeting_the_others
main(sys.argv[1:])
