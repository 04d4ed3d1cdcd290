"""`--log tensorboard` and `--log mlflow`, read back from what they stored: TensorBoard's event files through its
EventAccumulator, MLflow's runs through its client on a local sqlite store. A resumed run continues the same logs
with no step twice; a failing tracker warns once and the run finishes; `wsml tune` nests each trial's run under
the study's."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import TINY, StopAfter, error_of, invoke, write
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process
from wsml_fast.data.sources import from_folder
from wsml_fast.training.config import resolve
from wsml_fast.training.run import resume, train
from wsml_fast.training.runfolder import RunFolder
from wsml_fast.training.stopping import RunInterrupted
from wsml_fast.training.trackers import TensorBoardTracker
from wsml_fast.training.tracking import RunTracking
from wsml_fast.tuning.study import JOURNAL


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory):
    """A local MLflow store for the module (MLFLOW_TRACKING_URI), its artifacts beside it."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.MonkeyPatch.context() as here:
            here.chdir(folder)  # MLflow's default experiment keeps its artifacts in ./mlruns, fixed when it is made
            MlflowClient().search_experiments()
        yield uri


def tracked(run: Path) -> dict:
    return json.loads((run / "tracking.json").read_text())


@pytest.fixture(scope="module")
def resumed(demo_folder: Path, tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> tuple[Path, dict]:
    """A run logged to both trackers, stopped in epoch 3 of 4, then resumed to its end; and what the trackers
    held when it stopped. Before resuming, TensorBoard is made to look as if epoch 2 never got out (tracking.json
    says epoch 1) while a stray value of a lost epoch 3 sits in its log: the resumed run must log epoch 2 again
    and leave no trace of the stray one."""
    out = tmp_path_factory.mktemp("runs") / "tracked"
    cli = {"data": str(demo_folder), "backbone": "test_efficientnet", "pretrained": False, "img_size": 32, "bs": 16}
    cli |= {"epochs": 4, "scheme": "llr", "out": str(out), "log": ["tensorboard", "mlflow"]}
    with pytest.raises(RunInterrupted):
        train(resolve(None, None, cli), from_folder(demo_folder), StopAfter(2 * 4 + 1))
    records = tracked(out)
    stopped = {"records": records, "status": MlflowClient().get_run(records["mlflow"]["run_id"]).info.status}
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_scalar("valid_map", -1.0, 3)
    (out / "tracking.json").write_text(json.dumps({**records, "tensorboard": {"epoch": 1}}))
    assert resume(out) is not None
    return out, stopped


def columns(run: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    assert {"train_recovery_map", "ll_selected", "ll_fn_precision"} <= set(metrics.columns)  # wsml's own columns
    return metrics.drop(columns="epoch")


def test_tensorboard_holds_every_column_at_every_epoch_once_and_the_config(resumed: tuple[Path, dict]) -> None:
    run, stopped = resumed
    assert stopped["records"]["tensorboard"] == {"epoch": 2}
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for name, values in columns(run).items():
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2, 3, 4], name
        np.testing.assert_allclose([s.value for s in scalars], values, rtol=1e-6, equal_nan=True, err_msg=name)
    results = json.loads((run / "results.json").read_text())
    final = {"test_map": results["test_map"], "best_valid_map": results["valid_map"]}
    final["test_cf1_at_thresholds"] = results["test_f1"]["at_thresholds"]["cf1"]
    for name, value in final.items():
        assert [(s.step, s.value) for s in events.Scalars(name)] == [(4, pytest.approx(value, rel=1e-6))]
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    config = RunFolder(run).config()
    assert start.hparams["scheme"].string_value == "llr"
    assert start.hparams["lr"].number_value == pytest.approx(config.lr)
    assert start.hparams["delta_rel"].number_value == pytest.approx(config.delta_rel)
    assert "_hparams_/session_end_info" in content  # the session ended


def test_mlflow_holds_the_config_every_epoch_once_the_results_and_the_files(resumed: tuple[Path, dict]) -> None:
    run, stopped = resumed
    run_id = tracked(run)["mlflow"]["run_id"]
    assert stopped["records"]["mlflow"] == {"run_id": run_id, "epoch": 2}  # the resumed run continued it
    assert stopped["status"] == "KILLED"
    client = MlflowClient()
    logged = client.get_run(run_id)
    assert (logged.info.status, logged.data.tags["wsml.status"], logged.info.run_name) == (
        "FINISHED",
        "finished",
        run.name,
    )
    assert logged.data.params == {k: str(v) for k, v in RunFolder(run).config().values().items()}
    for name, values in columns(run).items():
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4], name
        np.testing.assert_allclose([m.value for m in history], values, equal_nan=True, err_msg=name)
    results = json.loads((run / "results.json").read_text())
    metrics = logged.data.metrics
    assert metrics["test_map"] == pytest.approx(results["test_map"])
    assert metrics["best_valid_map"] == pytest.approx(results["valid_map"])
    assert metrics["best_epoch"] == results["best_epoch"]
    for variant, figures in results["test_f1"].items():
        if isinstance(figures, dict):
            assert all(metrics[f"test_{k}_{variant}"] == pytest.approx(v) for k, v in figures.items())
    files = {f.path: f.file_size for f in client.list_artifacts(run_id)}
    assert files == {
        name: (run / name).stat().st_size for name in ("model.pth", "thresholds.csv", "config.yaml", "report.html")
    }


def test_a_failing_tracker_warns_once_and_the_run_finishes(
    demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self, row: dict) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log_epoch", full_disk)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a server that is down: nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # (the user's setting wins over wsml's few retries)
    out = tmp_path / "run"
    result = invoke("train", "--data", demo_folder, *TINY, "--log", "tensorboard", "--log", "mlflow", "--out", out)
    assert result.exit_code == 0, result.output
    warnings = sorted(line for line in result.output.splitlines() if line.startswith("warning: --log"))
    assert len(warnings) == 2, result.output  # one each, though each would have failed at every call
    assert warnings[0].startswith("warning: --log mlflow failed and is off from here (MlflowException: ")
    assert warnings[1].startswith("warning: --log tensorboard failed and is off from here (OSError: ")
    assert all(w.endswith("training goes on and the run folder keeps every value") for w in warnings)
    assert len(pd.read_csv(out / "metrics.csv")) == 2
    assert json.loads((out / "results.json").read_text())["status"] == "finished"
    assert tracked(out) == {"tensorboard": {"epoch": 0}}  # MLflow never started; TensorBoard logged no epoch


def test_tune_nests_each_trial_under_the_studys_run(demo_folder: Path, tmp_path: Path, mlflow_uri: str) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    search = write(tmp_path / "search.yaml", "lr: [1.0e+20, 0.01]\nbs: [16]\n")
    study = optuna.create_study(study_name="wsml", storage=_journal(out), direction="maximize")
    study.enqueue_trial({"scheme": "an", "lr": 1e20, "bs": 16})  # diverges: a failed trial
    study.enqueue_trial({"scheme": "an", "lr": 0.01, "bs": 16})
    args = ["--data", demo_folder, *TINY[:5], "--schemes", "an", "--search", search, "--out", out, "--log", "mlflow"]
    first = invoke("tune", *args, "--trials", "2", "--epochs", "2")
    assert first.exit_code == 0, first.output
    parent = tracked(out)["mlflow"]["run_id"]
    complete = study.trials[1]
    for _ in range(5):  # five trials far better at every epoch: the next real one is pruned
        better = optuna.trial.create_trial(
            params=complete.params,
            distributions=complete.distributions,
            value=0.0,
            intermediate_values=dict.fromkeys(range(1, 5), 99.0),
        )
        study.add_trial(better)
    study.enqueue_trial({"scheme": "an", "lr": 0.01, "bs": 16})
    second = invoke("tune", *args, "--trials", "8", "--epochs", "4")
    assert second.exit_code == 0, second.output
    assert tracked(out)["mlflow"]["run_id"] == parent  # the same command again continues the study's run
    client = MlflowClient()
    study_run = client.get_run(parent)
    best = json.loads((out / "best.json").read_text())
    assert study_run.info.status == "FINISHED" and study_run.data.tags["wsml.best_trial"] == "1"
    assert study_run.data.metrics["best_valid_map"] == pytest.approx(best["valid_map"])
    assert {f.path for f in client.list_artifacts(parent)} == {"best.yaml", "best.json", "trials.csv", "tune.png"}
    assert [m.step for m in client.get_metric_history(parent, "trial_valid_map")] == [1]
    nested = client.search_runs(
        [study_run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=100
    )
    by_trial = {run.data.tags["wsml.trial"]: run for run in nested}
    assert sorted(by_trial) == ["0", "1", "7"]
    states = {n: (r.info.status, r.data.tags["wsml.trial_state"]) for n, r in by_trial.items()}
    assert states == {"0": ("FAILED", "fail"), "1": ("FINISHED", "complete"), "7": ("FINISHED", "pruned")}
    assert by_trial["7"].data.tags["wsml.status"].startswith("finished: pruned after epoch 2")
    assert by_trial["1"].data.metrics["best_valid_map"] == pytest.approx(best["valid_map"])


def _journal(folder: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


def test_under_torchrun_process_0_alone_logs(tmp_path: Path) -> None:
    config = resolve(None, None, {"log": ["tensorboard"]})
    for rank in (1, 0):
        run = RunFolder(tmp_path / f"rank{rank}", writes=rank == 0)
        setup = SimpleNamespace(config=config, process=Process(rank, 2), run=run, say=print)
        tracking = RunTracking.open(setup, [])
        assert list(tracking.trackers) == ([] if rank else ["tensorboard"])
        tracking.close("finished")
    assert not (tmp_path / "rank1").exists()
    assert tracked(tmp_path / "rank0") == {"tensorboard": {"epoch": 0}}
    assert any((tmp_path / "rank0" / "tensorboard").iterdir())


def test_log_options_a_recipe_and_the_missing_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert error_of("train", "--log", "wandb") == "error: --log 'wandb' is not one of: tensorboard, mlflow"
    assert "--log cannot be changed" in error_of("train", "--resume", tmp_path, "--log", "mlflow")
    config = resolve({"log": ["tensorboard"]}, "mine", {})
    assert (config.log, config.sources["log"]) == (["tensorboard"], "recipe:mine")
    assert resolve(None, None, {"log": ["tensorboard", "mlflow"]}).log == ["tensorboard", "mlflow"]
    with pytest.raises(WsmlError, match=r"^log: give a list of tracker names, such as `log: \[tensorboard\]`"):
        resolve({"log": "tensorboard"}, "mine", {})
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    assert error_of("train", "--log", "mlflow") == (
        "error: --log mlflow needs the mlflow-skinny package, in wsml's `track` extra: pip install -e '.[track]' "
        "in wsml's checkout, or pip install mlflow-skinny"
    )
