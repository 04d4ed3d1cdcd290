"""`python kill_during.py EPOCH BATCH wsml-arguments...`: run `wsml` and SIGKILL it at the given training batch
(0-based) of the given epoch (from 1): a kill at a known instant, for the resume tests."""

import os
import signal
import sys

from fastai.callback.core import Callback

import wsml_fast.train as train_module
from wsml_fast.cli import app

EPOCH, BATCH = int(sys.argv[1]), int(sys.argv[2])


class KillAt(Callback):
    order = 99

    def after_batch(self) -> None:
        if self.learn.training and self.run_state.epoch == EPOCH and self.learn.iter == BATCH:
            os.kill(os.getpid(), signal.SIGKILL)


build_learner = train_module.build_learner


def build_learner_with_a_kill(*args, **kwargs):
    learn, data = build_learner(*args, **kwargs)
    learn.add_cb(KillAt())
    return learn, data


train_module.build_learner = build_learner_with_a_kill
app(sys.argv[3:])
