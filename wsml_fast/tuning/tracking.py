"""`wsml tune --log mlflow`: one MLflow run for the study, with each trial's run nested under it.

The study's run has its id kept in TUNE_DIR/tracking.json, so running the same `wsml tune` command again continues
it. It holds the study's settings as parameters, each completed trial's valid mAP at step = trial number, and at
the end the best trial's results and the study's files. Each trial's run (an ordinary run's tracker, labelled
with the parent's id) is tagged with the trial's state: complete, pruned, fail or interrupted. Like a run's
trackers, a failure warns once and the study goes on. (`--log tensorboard` needs nothing here: every trial
writes its own run folder's log, and TensorBoard pointed at TUNE_DIR shows them side by side.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsml_fast.core.atomic import write_text
from wsml_fast.training.runfolder import RunFolder
from wsml_fast.training.trackers import (
    MLFLOW_STATUS,
    final_metrics,
    mlflow_artifacts,
    mlflow_client,
    mlflow_experiment,
    mlflow_metrics,
    mlflow_params,
    mlflow_patience,
)
from wsml_fast.training.tracking import Guarded, kept_records

if TYPE_CHECKING:
    import optuna

    from wsml_fast.tuning.study import Tuner

STUDY_TRACKING = "tracking.json"  # in the tune folder


class _StudyRun:
    """The MLflow calls of a study's run (each made through `Guarded`, with `mlflow_patience`)."""

    calls = staticmethod(mlflow_patience)

    def start(self, run_id: str | None, name: str, params: dict[str, Any]) -> str:
        self.client = mlflow_client()
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        created = self.client.create_run(mlflow_experiment(self.client), run_name=name, tags={"wsml.study": name})
        mlflow_params(self.client, created.info.run_id, params)
        return created.info.run_id

    def trial(self, run_id: str, number: int, state: str, trial_run: str | None, value: float | None) -> None:
        if value is not None:
            mlflow_metrics(self.client, run_id, {"trial_valid_map": value}, number)
        if trial_run is not None:
            self.client.set_tag(trial_run, "wsml.trial_state", state)

    def finish(self, run_id: str, best: dict[str, Any], artifacts: list[Path]) -> None:
        mlflow_metrics(self.client, run_id, final_metrics(best), best["trial"])
        self.client.set_tag(run_id, "wsml.best_trial", str(best["trial"]))
        mlflow_artifacts(self.client, run_id, artifacts)

    def close(self, run_id: str, state: str) -> None:
        self.client.set_terminated(run_id, MLFLOW_STATUS[state])


class StudyTracking:
    """The study's MLflow run, or nothing at all when the study does not log to MLflow."""

    def __init__(self, folder: Path, guarded: Guarded | None = None, run_id: str | None = None) -> None:
        self.folder, self.guarded, self.run_id = folder, guarded, run_id

    @classmethod
    def open(cls, tuner: Tuner, trials: int) -> StudyTracking:
        """Start (or continue) the study's run when its runs log to MLflow."""
        if "mlflow" not in tuner.base_for(tuner.schemes[0]).log:
            return cls(tuner.folder)
        kept = (kept_records(RunFolder(tuner.folder)).get("mlflow") or {}).get("run_id")
        name = tuner.study.study_name
        params = {"study": name, "schemes": ",".join(tuner.schemes), "trials": trials, "folder": tuner.folder}
        guarded = Guarded("mlflow", _StudyRun(), tuner.say)
        run_id = guarded.call("start", kept, name, params)
        if run_id:
            write_text(tuner.folder / STUDY_TRACKING, json.dumps({"mlflow": {"run_id": run_id}}, indent=2) + "\n")
        return cls(tuner.folder, guarded, run_id)

    def trial_tags(self, number: int) -> dict[str, str] | None:
        """What a trial's run is labelled with: its study's run (MLflow's parent tag) and its number."""
        return {"mlflow.parentRunId": self.run_id, "wsml.trial": str(number)} if self.run_id else None

    def trial_done(self, trial: optuna.trial.FrozenTrial) -> None:
        """A finished trial: its valid mAP on the study's run, its state on its own run."""
        if not self.run_id:
            return
        state = "interrupted" if trial.user_attrs.get("interrupted") else trial.state.name.lower()
        folder = trial.user_attrs.get("run")
        trial_run = (kept_records(RunFolder(Path(folder))).get("mlflow") or {}).get("run_id") if folder else None
        value = trial.value if state == "complete" else None  # (a pruned trial's is that of its last epoch)
        self.guarded.call("trial", self.run_id, trial.number, state, trial_run, value)

    def finish(self, best: dict[str, Any] | None, files: list[Path]) -> None:
        """The best trial's results (best.json's) and the study's files (those that exist)."""
        if not self.run_id:
            return
        if best is not None:
            self.guarded.call("finish", self.run_id, best, [path for path in files if path.is_file()])
        self.guarded.call("close", self.run_id, "finished")

    def close(self, state: str) -> None:
        if self.run_id:
            self.guarded.call("close", self.run_id, state)
