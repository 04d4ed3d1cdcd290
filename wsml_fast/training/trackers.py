"""The experiment trackers a run can log to besides its own files: `--log tensorboard`, `--log mlflow`.

One registry of tracker classes by name (`TRACKERS`, filled by `@register`, as timm registers its models), each
a small class with one interface (`Tracker`). `tracking.RunTracking` drives them from the rows the run writes to
metrics.csv, so wsml's own columns (`train_recovery_map`, `ll_*`, `apl_*`), which fastai's tracker callbacks never
see, are logged too. The libraries are optional (the `track` extra); a tracker imports its own when it starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import numbers
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from wsml_fast.core.errors import WsmlError
from wsml_fast.training.runfolder import TENSORBOARD

if TYPE_CHECKING:
    from wsml_fast.training.config import TrainConfig
    from wsml_fast.training.runfolder import RunFolder

EXTRA = "track"  # pyproject.toml's extra that installs every tracker's library


class Tracker:
    """One tracker of one run. Any method may raise: the driver then warns once and leaves the tracker alone.

    `start` opens it: `kept` is None for a new run, else what it returned from `start` last time, with `epoch`,
    the last epoch it logged (a resumed run); it returns what to keep for next time. `log_epoch` gets each finished
    epoch's row of metrics.csv; `finish` the run's results (results.json) and the run folder's files to keep;
    `close` how the run ended: finished, interrupted or failed."""

    name: ClassVar[str]
    package: ClassVar[str]  # the module it needs, which the `track` extra installs
    pip_name: ClassVar[str]

    def start(self, run: RunFolder, config: TrainConfig, kept: dict | None, tags: dict[str, str]) -> dict:
        raise NotImplementedError

    def log_epoch(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, results: dict[str, Any], artifacts: list[Path]) -> None:
        raise NotImplementedError

    def close(self, state: str) -> None:
        raise NotImplementedError

    def calls(self) -> contextlib.AbstractContextManager:
        """The context each call to the tracker is made in (the driver enters it)."""
        return contextlib.nullcontext()


TRACKERS: dict[str, type[Tracker]] = {}


def register(cls: type[Tracker]) -> type[Tracker]:
    TRACKERS[cls.name] = cls
    return cls


def tracker_class(name: str) -> type[Tracker]:
    """The tracker named `name`, once its library is known to be installed (else one line saying how)."""
    if name not in TRACKERS:
        raise WsmlError(f"--log {name!r} is not one of: {', '.join(TRACKERS)}")
    cls = TRACKERS[name]
    if importlib.util.find_spec(cls.package) is None:
        raise WsmlError(
            f"--log {name} needs the {cls.pip_name} package, in wsml's `{EXTRA}` extra: pip install -e '.[{EXTRA}]' "
            f"in wsml's checkout, or pip install {cls.pip_name}"
        )
    return cls


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numeric columns of a metrics.csv row, but the epoch itself (the step they are logged at)."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, numbers.Real)}


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The results of a run (results.json) as flat metrics: the best epoch, its valid mAP, the test mAP and the
    test F1 family (`test_cf1_at_thresholds`, `test_of1_top3`, ...), where the run has them. Named apart from the
    per-epoch columns (`best_valid_map`, not `valid_map`) so no step of an epoch's values is logged twice."""
    found = {"best_epoch": results.get("best_epoch"), "best_valid_map": results.get("valid_map")}
    found["test_map"] = results.get("test_map")
    for variant, figures in (results.get("test_f1") or {}).items():
        if isinstance(figures, dict):
            found |= {f"test_{name}_{variant}": value for name, value in figures.items()}
    return {k: float(v) for k, v in found.items() if isinstance(v, numbers.Real)}


def hparam_value(value: Any) -> Any:
    """A config value as a parameter: numbers, text and truth values as they are, anything else as text."""
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


@register
class TensorBoardTracker(Tracker):
    """TensorBoard event files in RUN_DIR/tensorboard (`torch.utils.tensorboard`): every numeric column of each
    epoch's row as a scalar at that epoch, the results as scalars at the last epoch, and the config in the HParams
    tab. The HParams summaries (session start at the run's start, session end when it finishes) go into the run's
    own log rather than the separate timestamped run `add_hparams` makes; with no experiment summary written,
    TensorBoard computes the HParams table from the sessions it finds, so a `wsml tune` folder of trials reads as
    one table. A resumed run writes from the epoch after the last it logged and purges whatever came later."""

    name, package, pip_name = "tensorboard", "tensorboard", "tensorboard"

    def start(self, run: RunFolder, config: TrainConfig, kept: dict | None, tags: dict[str, str]) -> dict:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.step = kept["epoch"] if kept else 0
        self.writer = SummaryWriter(str(run.file(TENSORBOARD)), purge_step=self.step + 1 if kept else None)
        if kept is None:
            session_start = hparams({k: hparam_value(v) for k, v in config.values().items()}, {})[1]
            self.writer.file_writer.add_summary(session_start)
            self.writer.flush()
        return {}

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.step = row["epoch"]
        for name, value in epoch_metrics(row).items():
            self.writer.add_scalar(name, value, self.step)
        self.writer.flush()  # TensorBoard shows each epoch as it ends

    def finish(self, results: dict[str, Any], artifacts: list[Path]) -> None:
        from torch.utils.tensorboard.summary import hparams

        for name, value in final_metrics(results).items():
            self.writer.add_scalar(name, value, self.step)
        self.writer.file_writer.add_summary(hparams({}, {})[2])  # the session ended with success
        self.writer.flush()

    def close(self, state: str) -> None:
        self.writer.close()


MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
MLFLOW_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@contextlib.contextmanager
def mlflow_patience() -> Iterator[None]:
    """MLflow's HTTP retries and timeout for wsml's calls, where the user set none: MLflow's own retry a server
    that is down for about four minutes a call, which would hold training up; with these a call gives up within
    seconds, wsml warns, and the run folder keeps the record (a resumed run catches the tracker up)."""
    unset = [name for name in MLFLOW_PATIENCE if name not in os.environ]
    os.environ.update({name: MLFLOW_PATIENCE[name] for name in unset})
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


def mlflow_client():
    """MLflow's client at MLFLOW_TRACKING_URI (MLflow's own default when unset)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def mlflow_experiment(client) -> str:
    """The experiment MLflow's own conventions name: MLFLOW_EXPERIMENT_NAME (made when missing), else
    MLFLOW_EXPERIMENT_ID, else MLflow's default experiment."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name)
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"


def mlflow_params(client, run_id: str, values: dict[str, Any]) -> None:
    """Log parameters as MLflow's text values, in the batches its API allows."""
    from mlflow.entities import Param

    params = [Param(k, str(v)) for k, v in values.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])


def mlflow_metrics(client, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in values.items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def mlflow_artifacts(client, run_id: str, artifacts: list[Path]) -> None:
    for path in artifacts:
        client.log_artifact(run_id, str(path))


@register
class MlflowTracker(Tracker):
    """An MLflow run through MLflow's client: the config as parameters, each epoch's numeric columns as metrics
    at step = epoch, the results as metrics and the run's status as the tag `wsml.status`, and the run folder's
    files as artifacts. Its id is kept in the run folder, so a resumed run continues the same MLflow run."""

    name, package, pip_name = "mlflow", "mlflow", "mlflow-skinny"
    calls = staticmethod(mlflow_patience)

    def start(self, run: RunFolder, config: TrainConfig, kept: dict | None, tags: dict[str, str]) -> dict:
        self.client = mlflow_client()
        self.step = kept["epoch"] if kept else 0
        if kept:
            self.run_id = kept["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"run_id": self.run_id}
        tags = {"wsml.run_folder": str(run.path.resolve()), **tags}
        created = self.client.create_run(mlflow_experiment(self.client), run_name=run.path.name, tags=tags)
        self.run_id = created.info.run_id
        mlflow_params(self.client, self.run_id, config.values())
        return {"run_id": self.run_id}

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.step = row["epoch"]
        mlflow_metrics(self.client, self.run_id, epoch_metrics(row), self.step)

    def finish(self, results: dict[str, Any], artifacts: list[Path]) -> None:
        mlflow_metrics(self.client, self.run_id, final_metrics(results), self.step)
        self.client.set_tag(self.run_id, "wsml.status", results.get("status", "finished"))
        mlflow_artifacts(self.client, self.run_id, artifacts)

    def close(self, state: str) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[state])
