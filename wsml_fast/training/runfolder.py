"""The run folder: everything a run produced, and all that `wsml eval`, `wsml predict` and `--resume` need.

It is the one place that knows the folder's file names, and every file in it is written atomically (a kill at
any instant leaves the previous good version, never a truncated one).

config.yaml            resolved configuration and where each value came from (enough to rerun)
status.json            how the run stands: running, finished, interrupted or failed (with the reason)
metrics.csv            one row per completed epoch
checkpoint.pth         the last completed epoch's whole state: what `wsml train --resume` continues from
model.pth              the model file: the best epoch's weights, what rebuilds them, the fitted thresholds
thresholds.csv         the per-class thresholds with their valid precision, recall and F1
scheme_state.pt        the schemes' stored labels / label estimates at the best epoch
corrected_labels.csv   llcp: every entry stored as positive, with its epoch
pseudo_labels.csv      em-apl: every entry given a soft negative pseudo-label, with its value and epoch
memorization.csv/.png  --track-memorization: losses of sampled unobserved entries
results.json           best epoch, valid and test mAP, the F1 family, classes (written when the run finishes)
report.html            the run on one self-contained page (at the end, and by `wsml report`)
train.log              everything the run printed
tracking.json          --log: each tracker's last logged epoch and MLflow's run id (what a resumed run continues)
tensorboard/           --log tensorboard: the TensorBoard event files
.lock                  held (flock) by the process that writes the run, for the run's life: who holds the folder

A run folder is claimed before anything is written in it (a new run's right after the folder is made, a resumed
run's first of all), and a process that cannot claim it stops in one line naming the holder. Whether a run marked
"running" still runs is decided by the lock alone: a dead process holds none, whatever became of its process id.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from wsml_fast.core import lock
from wsml_fast.core.atomic import atomic_write, save_torch, write_text
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.report import Reporter
from wsml_fast.model.modelfile import ModelFile
from wsml_fast.schemes.em import PSEUDO_LABELS
from wsml_fast.schemes.large_loss import CORRECTIONS
from wsml_fast.training.config import TrainConfig

CONFIG, STATUS, METRICS, RESULTS, LOG = "config.yaml", "status.json", "metrics.csv", "results.json", "train.log"
WEIGHTS, CHECKPOINT, SCHEME_STATE, THRESHOLDS = "model.pth", "checkpoint.pth", "scheme_state.pt", "thresholds.csv"
MEMORIZATION_CSV, MEMORIZATION_PNG = "memorization.csv", "memorization.png"
TRACKING, TENSORBOARD, REPORT = "tracking.json", "tensorboard", "report.html"
RUN_FILES = (CONFIG, STATUS, METRICS, RESULTS, LOG, WEIGHTS, CHECKPOINT, SCHEME_STATE, THRESHOLDS, CORRECTIONS)
RUN_FILES += (PSEUDO_LABELS, MEMORIZATION_CSV, MEMORIZATION_PNG, TRACKING, TENSORBOARD, REPORT)
LOCK = ".lock"
# what `atomic_write` leaves of a run file when killed mid-write: `.NAME.` + mkstemp's 8 characters + `.tmp`
STALE_TEMPORARY = re.compile(rf"\.({'|'.join(map(re.escape, RUN_FILES))})\.[a-z0-9_]{{8}}\.tmp")


def default_run_dir(dataset: str, scheme: str) -> Path:
    return Path("runs") / f"{dataset}-{scheme}-{time.strftime('%Y%m%d-%H%M%S')}"


def _probe_writable(folder: Path) -> None:
    """Write and remove a small file, so an unwritable place or a full disk is found before any training."""
    probe = folder / f".write-check-{os.getpid()}"
    write_text(probe, "ok")
    probe.unlink()


class RunFolder:
    """A training run on disk: finished, running, interrupted or failed. In a data-parallel run every process
    reads it and only process 0 writes (and holds the folder): the others are given a folder whose `writes` is
    False, and their writes do nothing."""

    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path, self.writes = Path(path), writes
        self.claimed = False  # whether this folder object holds the folder (`claim`), so `release` lets it go
        self.unlocked = False  # claimed where the file system has no locks: nothing keeps a second process out

    def file(self, name: str) -> Path:
        return self.path / name

    # --- making and finding run folders ---

    @classmethod
    def check_new(cls, path: Path, writes: bool) -> RunFolder:
        """A place a new run can go, checked before any work (nothing is created yet) by every process of a
        data-parallel run alike; `writes`: whether this process writes the run (process 0 of a data-parallel run
        alone), given by the caller, never assumed."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise WsmlError(f"--out {path}: is a file, not a folder; choose a folder for the run")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise WsmlError(f"--out {path}: {parent} is a file, so no folder can be made under it")
                break
        run = cls(path, writes)
        run._refuse_if_held()
        run._refuse_if_taken()
        return run

    def _refuse_if_held(self) -> None:
        if lock.probe(self.file(LOCK)):
            raise WsmlError(self._held_message("--out", lock.holder(self.file(LOCK))))

    def _held_message(self, option: str, holder: str) -> str:
        if option == "--resume":
            return f"--resume {self.path}: the run is still running ({holder}); stop it first"
        return f"--out {self.path}: a run is writing this folder ({holder}); choose another folder"

    def _refuse_if_taken(self) -> None:
        """A new run never goes where a run was: the advice says what that run allows."""
        if not (self.file(CONFIG).exists() or self.file(WEIGHTS).exists()):
            return
        if self.file(CHECKPOINT).is_file():
            advice = f"`wsml train --resume {self.path}` continues it"
        else:
            advice = f"it completed no epoch: remove {self.path} to start again there"
        raise WsmlError(f"--out {self.path}: already holds a run; choose another folder ({advice})")

    def reporter(self) -> Reporter:
        """What the run says goes to the console and its log (from the process that writes)."""
        return Reporter(self.file(LOG), self.writes)

    def create(self) -> Reporter:
        """Make the folder and claim it before anything else is written in it (then look again: a run may have
        been put there since `check_new`), prove it writable; a fresh log. Returns the run's reporter."""
        if not self.writes:
            return self.reporter()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WsmlError(f"--out {self.path}: cannot be created ({exc.strerror})") from None
        self.claim("--out")
        try:
            self._refuse_if_taken()
            _probe_writable(self.path)
        except WsmlError:
            self.release()
            raise
        self.file(LOG).unlink(missing_ok=True)
        return self.reporter()

    def claim(self, option: str) -> None:
        """Hold the folder for this process until `release` or its end (the process that writes alone), and remove
        what writes killed midway left; `option` (--out or --resume) words the refusal when another holds it."""
        if not self.writes:
            return
        try:
            self.unlocked = not lock.claim(self.file(LOCK))
        except lock.LockHeld as held:
            raise WsmlError(self._held_message(option, held.holder)) from None
        self.claimed = True
        for stale in self.path.iterdir():
            if STALE_TEMPORARY.fullmatch(stale.name):
                stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Let another process claim the folder if this object claimed it (the kernel does it when the process
        ends)."""
        if self.claimed:
            lock.release(self.file(LOCK))
            self.claimed = False

    def _require_folder(self) -> None:
        if not self.path.is_dir():
            raise WsmlError(f"{self.path}: run folder not found")
        if not self.file(CONFIG).is_file():
            raise WsmlError(f"{self.path}: not a wsml run folder (no {CONFIG}); pass the --out of `wsml train`")

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """A run with trained weights (finished or interrupted), for `eval` and `predict`."""
        run = cls(path)
        run._require_folder()
        if run.file(WEIGHTS).is_file():
            return run
        if run.file(RESULTS).is_file() or run.file(CHECKPOINT).is_file():
            finished = "finished" if run.file(RESULTS).is_file() else "interrupted"
            raise WsmlError(
                f"{run.file(WEIGHTS)}: missing from this {finished} run (it was deleted or moved); put it back, "
                "or train the run again"
            )
        raise WsmlError(f"{path}: no trained weights yet (the run is in, or stopped in, its first epoch)")

    @classmethod
    def for_resume(cls, path: Path, writes: bool) -> RunFolder:
        """A run that `wsml train --resume` can continue, claimed by this process: it has a checkpoint and no
        other process holds it (whatever its status.json says)."""
        run = cls(path, writes)
        run._require_folder()
        run.claim("--resume")
        if not run.file(CHECKPOINT).is_file():
            run.release()
            raise WsmlError(
                f"--resume {path}: no {CHECKPOINT}: the run stopped before its first epoch completed; "
                "nothing to continue (start it again in a new folder)"
            )
        if not run.file(WEIGHTS).is_file():  # the best epoch so far may stay the best: the run would end without it
            run.release()
            raise WsmlError(
                f"--resume {path}: {WEIGHTS} (the best epoch's weights) is missing (it was deleted or moved); put it "
                "back, or train the run again in a new folder"
            )
        return run

    # --- status ---

    def write_status(self, state: str, reason: str | None = None, epoch: int | None = None) -> None:
        status = {"state": state, "epoch": epoch, "reason": reason, "pid": os.getpid(), "host": socket.gethostname()}
        status["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write_text(STATUS, json.dumps(status, indent=2) + "\n")

    def status(self) -> dict[str, Any]:
        """How the run stands. A run marked running that no process holds was killed (where the file system has
        no locks, status.json is believed)."""
        if not self.file(STATUS).is_file():
            return {"state": "unknown"}
        try:
            status = json.loads(self.file(STATUS).read_text())
        except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
            status = None
        if not isinstance(status, dict) or not isinstance(status.get("state"), str):
            raise WsmlError(
                f"{self.file(STATUS)}: not a status wsml wrote (a JSON object with a 'state'); delete it, or "
                f"`wsml train --resume {self.path}` writes it again"
            )
        if status["state"] == "running" and lock.probe(self.file(LOCK)) is False:
            status.update(state="interrupted", reason="the process was killed")
        return status

    # --- files of the run ---

    def write_text(self, name: str, text: str) -> None:
        """Write a file of the run atomically (by the process that writes alone)."""
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.writes:
            atomic_write(self.file(name), lambda handle: handle.write(data))

    def _save(self, name: str, obj: object) -> None:
        if self.writes:
            save_torch(self.file(name), obj)

    def write_config(self, config: TrainConfig) -> None:
        self.write_text(CONFIG, config.to_yaml())

    def config(self) -> TrainConfig:
        return TrainConfig.from_yaml(self.file(CONFIG))

    def write_metrics(self, rows: list[dict]) -> None:
        self.write_text(METRICS, csv_text(rows))

    def write_results(self, results: dict) -> None:
        self.write_text(RESULTS, json.dumps(results, indent=2) + "\n")

    def results(self) -> dict:
        return self._read_json(RESULTS)

    def _read_json(self, name: str) -> dict:
        try:
            return json.loads(self.file(name).read_text())
        except (OSError, json.JSONDecodeError):
            raise WsmlError(f"{self.file(name)}: not readable JSON; the run folder is damaged") from None

    def save_model(self, model: ModelFile) -> None:
        if self.writes:
            model.save(self.file(WEIGHTS))

    def save_decisions(self, model: ModelFile, thresholds_csv: str) -> None:
        """The model file with newly fitted thresholds, and thresholds.csv beside it."""
        self.save_model(model)
        self.write_text(THRESHOLDS, thresholds_csv)

    def model_file(self) -> ModelFile:
        return ModelFile.load(self.file(WEIGHTS))

    def save_scheme_state(self, states: dict) -> None:
        self._save(SCHEME_STATE, states)

    def save_checkpoint(self, checkpoint: dict) -> None:
        self._save(CHECKPOINT, checkpoint)

    def load_scheme_state(self) -> dict:
        return self._load(SCHEME_STATE)

    def load_checkpoint(self, mmap: bool = False) -> dict:
        """The last completed epoch's state (memory-mapped: only what is read is loaded)."""
        return self._load(CHECKPOINT, mmap)

    def _load(self, name: str, mmap: bool = False) -> dict:
        import torch

        path = self.file(name)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except FileNotFoundError:
            raise WsmlError(f"{path}: file not found; the run folder is incomplete") from None
        except Exception as exc:  # noqa: BLE001 - truncated, text, or another format: all mean a damaged file
            raise WsmlError(f"{path}: not a readable wsml file ({exc.__class__.__name__}); it is damaged") from None

    # --- the trained model ---

    def weights_note(self) -> str | None:
        """For a run that did not finish: which epoch's weights `model.pth` holds, in one line."""
        if self.file(RESULTS).is_file() or not self.file(CHECKPOINT).is_file():
            return None
        meta = self.load_checkpoint(mmap=True)["meta"]
        history = meta["history"]
        best = meta["best_epoch"]
        return (
            f"note: {self.path} did not finish ({self.status().get('state')}); using the weights of epoch {best}, "
            f"the best of {len(history)} completed epochs (`wsml train --resume {self.path}` continues it)"
        )


def csv_text(rows: list[dict]) -> str:
    """CSV of dict rows, the columns in order of first appearance (a row may lack some: left empty)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
