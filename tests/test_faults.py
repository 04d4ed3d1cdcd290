"""Every fault a user can cause or suffer: a one-line error or a clean stop, a status that says how the run
ended, and never a truncated file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, error_of, invoke
from PIL import Image

from wsml_fast.core import atomic
from wsml_fast.core.errors import WsmlError
from wsml_fast.training.runfolder import RunFolder


class FailingHandle:
    """A file handle that fails with a full disk after `limit` bytes."""

    def __init__(self, handle, limit: int) -> None:
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


def test_a_save_that_fails_midway_leaves_the_previous_file(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.save_checkpoint({"meta": {"epoch": 1}, "weights": torch.ones(1000)})
    good = (tmp_path / "checkpoint.pth").read_bytes()

    def half_written(handle) -> None:
        torch.save({"meta": {"epoch": 2}, "weights": torch.zeros(1000)}, FailingHandle(handle, 1500))

    with pytest.raises(WsmlError, match=r"checkpoint.pth: no space left on the device"):
        atomic.atomic_write(tmp_path / "checkpoint.pth", half_written)
    assert (tmp_path / "checkpoint.pth").read_bytes() == good
    assert run.load_checkpoint()["meta"]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_written_files_get_the_permissions_open_would_give(tmp_path: Path, umask: int) -> None:
    """mkstemp makes 0600 files: a run shared through the umask must be readable as train.log is."""
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o604)
    previous = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic.write_text(tmp_path / "new.txt", "x")
        atomic.write_text(kept, "new")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"plain.txt": 0o666 & ~umask, "new.txt": 0o666 & ~umask, "kept.txt": 0o604}


def test_a_stop_keeps_the_last_complete_epoch_and_says_how_to_resume(interrupted_run: Path) -> None:
    status = json.loads((interrupted_run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["reason"] == "SIGTERM" and status["epoch"] == 2
    last = (interrupted_run / "train.log").read_text().splitlines()[-1]
    assert last == (
        f"SIGTERM: stopped in epoch 3; the checkpoint of epoch 2 is kept; continue with: wsml train --resume "
        f"{interrupted_run}"
    )
    assert torch.load(interrupted_run / "checkpoint.pth", weights_only=True)["meta"]["epoch"] == 2
    assert not (interrupted_run / "results.json").exists()


def test_eval_and_predict_use_an_interrupted_runs_best_weights_and_say_so(
    interrupted_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    best = torch.load(interrupted_run / "checkpoint.pth", weights_only=True)["meta"]["best_epoch"]
    note = f"using the weights of epoch {best}, the best of 2 completed epochs"
    result = invoke("eval", interrupted_run)
    assert result.exit_code == 0 and note in result.output and "test mAP" in result.output
    image = demo_folder / "images" / "test" / "00000.png"
    result = invoke("predict", interrupted_run, image, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0 and note in result.output and (tmp_path / "p.csv").is_file()


def test_resume_refuses_what_it_cannot_do(interrupted_run: Path, tmp_path: Path) -> None:
    assert "--lr cannot be changed (only a larger --epochs)" in error_of(
        "train", "--resume", interrupted_run, "--lr", "1"
    )
    assert "--scheme cannot be changed" in error_of("train", "--resume", interrupted_run, "--scheme", "llr")
    assert "resuming can only add epochs" in error_of("train", "--resume", interrupted_run, "--epochs", "3")
    assert "not a wsml run folder" in error_of("train", "--resume", tmp_path)
    assert "run folder not found" in error_of("train", "--resume", tmp_path / "nothing")


def test_a_finished_run_says_it_is_finished(demo_folder: Path, tmp_path: Path) -> None:
    assert invoke("train", "--data", demo_folder, *TINY, "--epochs", "1", "--out", tmp_path / "r").exit_code == 0
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "finished"
    result = invoke("train", "--resume", tmp_path / "r")
    assert result.exit_code == 0 and "is finished after 1 epochs; nothing to resume" in result.output
    longer = invoke("train", "--resume", tmp_path / "r", "--epochs", "2")  # a larger --epochs trains on
    assert longer.exit_code == 0, longer.output
    assert "after epoch 1 of 2" in longer.output and "epoch 2" in (tmp_path / "r" / "train.log").read_text()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_the_cli_cleanly(demo_folder: Path, tmp_path: Path, signum: int, code: int) -> None:
    out = tmp_path / "run"
    args = ["--data", demo_folder, *TINY[:-2], "--bs", "4", "--epochs", "6", "--workers", "2", "--out", out]
    command = [sys.executable, "-m", "wsml_fast", "train", *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pth").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert f"continue with: wsml train --resume {out}" in stdout.splitlines()[-1]
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"
    resumed = invoke("train", "--resume", out)
    assert resumed.exit_code == 0 and "run folder" in resumed.output


def test_a_non_finite_loss_stops_the_run_in_one_line(demo_folder: Path, tmp_path: Path) -> None:
    line = error_of("train", "--data", demo_folder, *TINY, "--lr", "1e20", "--schedule", "constant", "--out", tmp_path)
    assert line.startswith("error: the training loss became nan in epoch 1, batch ")
    assert line.endswith("start a new run with a lower --lr than 1e+20")
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"
    assert (tmp_path / "train.log").read_text().splitlines()[-1].startswith("failed: the training loss became nan")
    for value in ("nan", "inf"):
        assert (
            error_of("train", "--data", demo_folder, "--lr", value)
            == f"error: --lr must be a finite number (got {value})"
        )


def test_an_exploding_loss_gets_a_warning(demo_folder: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data", demo_folder, *TINY, "--lr", "1e6", "--out", tmp_path / "r")
    assert result.exit_code == 0
    assert "training is diverging: a lower --lr helps" in result.output


def test_unwritable_places_are_refused_before_training(
    demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is a file, not a folder" in error_of("train", "--data", demo_folder, *TINY, "--out", a_file)
    assert "is a file, so no folder can be made under it" in error_of(
        "train", "--data", demo_folder, *TINY, "--out", a_file / "run"
    )

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    line = error_of("train", "--data", demo_folder, *TINY, "--out", tmp_path / "ro")
    assert "not writable (Permission denied); choose a folder you can write to" in line
    assert not (tmp_path / "ro" / "config.yaml").exists()


def test_a_finished_run_without_its_model_file_says_it_is_missing(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("model.pth"))
    assert error_of("eval", run) == (
        f"error: {run / 'model.pth'}: missing from this finished run (it was deleted or moved); put it back, or "
        "train the run again"
    )


def test_damaged_weights_are_one_line_errors(interrupted_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    (run / "model.pth").write_text("these are not weights")
    line = error_of("eval", run)
    assert "model.pth: not a readable model file (IndexError); pass the model.pth of a wsml run" in line
    good = (interrupted_run / "model.pth").read_bytes()
    (run / "model.pth").write_bytes(good[: len(good) // 2])
    assert "model.pth: not a readable model file" in error_of("predict", run, run / "model.pth")


def test_predict_checks_its_output_before_scoring(
    interrupted_run: Path, demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsml_fast.inference.trained

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before checking --out")

    monkeypatch.setattr(wsml_fast.inference.trained, "scored_batches", no_scoring)
    image = demo_folder / "images" / "test" / "00000.png"
    assert "is a file of the run folder" in error_of(
        "predict", interrupted_run, image, "--out", interrupted_run / "metrics.csv"
    )
    assert "does not exist; create it" in error_of(
        "predict", interrupted_run, image, "--out", tmp_path / "no" / "p.csv"
    )
    assert "is a folder; name the file to write" in error_of("predict", interrupted_run, image, "--out", tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_fails_to_decode_during_training_is_one_line(
    demo_folder: Path, tmp_path: Path, workers: int
) -> None:
    """A truncated JPEG passes the header check before training and fails in a (worker's) batch."""
    data = tmp_path / "data"
    shutil.copytree(demo_folder, data)
    Image.open(data / "images" / "train" / "00005.png").convert("RGB").save(data / "images" / "train" / "x.jpg")
    jpeg = (data / "images" / "train" / "x.jpg").read_bytes()
    (data / "images" / "train" / "00005.png").write_bytes(jpeg[:-200])  # a truncated JPEG under the old name
    line = error_of("train", "--data", data, *TINY, "--workers", str(workers), "--out", tmp_path / "run")
    image = data / "images" / "train" / "00005.png"
    assert line.startswith(f"error: {image}: cannot read image (image file is truncated (")
    assert line.endswith(f"; no epoch completed: remove {tmp_path / 'run'} and start again")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"
