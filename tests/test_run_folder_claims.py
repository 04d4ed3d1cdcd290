"""Who holds a run folder (a lock, never a process id alone), and what a resumed run must find unchanged: its
settings, its launch and its inputs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import HOOKED, TINY, error_of, hooked_env, invoke

import wsml_fast.training.run as run_module
from wsml_fast.core import lock
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process
from wsml_fast.data.sources import from_folder
from wsml_fast.training.continuity import check_launch
from wsml_fast.training.runfolder import RunFolder
from wsml_fast.training.setup import set_up


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def test_a_live_run_keeps_its_folder_and_a_killed_one_resumes_at_once(demo_folder: Path, tmp_path: Path) -> None:
    """Real processes: a run paused in epoch 1 holds its folder against a second train and a second resume; killed
    in epoch 2, it resumes at once."""
    run, go = tmp_path / "run", tmp_path / "go"
    args = ["train", "--data", demo_folder, *TINY, "--workers", "0", "--out", run]
    env = hooked_env(WSML_PAUSE_AT=f"1,0,{go}", WSML_KILL_AT="2,0")
    first = subprocess.Popen(
        [sys.executable, str(HOOKED), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(Path(f"{go}.reached"), first)
    files = {name: (run / name).read_bytes() for name in ("config.yaml", "train.log", "status.json")}
    holder = f"(process {first.pid} on {socket.gethostname()} since "
    line = error_of(*args[:-1], tmp_path / "run")
    assert line.startswith(f"error: --out {run}: a run is writing this folder {holder}") and "another folder" in line
    line = error_of("train", "--resume", run)
    assert line.startswith(f"error: --resume {run}: the run is still running {holder}") and "stop it first" in line
    assert {name: (run / name).read_bytes() for name in files} == files  # nothing of the first run was touched
    assert RunFolder(run).status()["state"] == "running"
    go.touch()
    first.communicate(timeout=120)
    assert first.returncode == -9
    status = RunFolder(run).status()
    assert (status["state"], status["reason"]) == ("interrupted", "the process was killed")
    resumed = invoke("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


FORKS_AND_DIES = """
import os, signal, sys, time
from wsml_fast.core import lock
assert lock.claim(sys.argv[1])
if os.fork() == 0:  # a child that outlives its parent, as DataLoader workers do for a while
    time.sleep(10)
    os._exit(0)
open(sys.argv[1] + ".forked", "w").close()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_does_not_keep_a_dead_parents_lock(tmp_path: Path) -> None:
    held = tmp_path / ".lock"
    parent = subprocess.run([sys.executable, "-c", FORKS_AND_DIES, str(held)], env=hooked_env(), timeout=60)
    assert parent.returncode == -9 and Path(f"{held}.forked").exists()
    assert lock.probe(held) is False  # (the child sleeps on)


@pytest.fixture
def run_copy(interrupted_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(interrupted_run, copy)
    return copy


@pytest.mark.parametrize("pid", [1, os.getpid()])
def test_a_recorded_process_id_that_lives_does_not_hold_the_folder(run_copy: Path, pid: int) -> None:
    """In a container the run was process 1, and so is its resume; after a reboot any process may have its id."""
    host = socket.gethostname()
    (run_copy / "status.json").write_text(json.dumps({"state": "running", "epoch": 2, "pid": pid, "host": host}))
    (run_copy / ".lock").write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01 00:00:00"}))
    assert RunFolder(run_copy).status()["state"] == "interrupted"
    RunFolder.for_resume(run_copy, writes=True).release()  # claimed, then let go


def test_a_held_folder_is_refused_naming_its_holder_and_free_once_released(run_copy: Path, tmp_path: Path) -> None:
    (run_copy / "status.json").write_text(json.dumps({"state": "running"}))
    assert lock.claim(run_copy / ".lock")
    try:
        holder = f"(process {os.getpid()} on {socket.gethostname()} since "
        assert holder in error_of("train", "--resume", run_copy)
        assert RunFolder(run_copy).status()["state"] == "running"  # believed while the lock is held
        (tmp_path / "new").mkdir()  # a new run's claim, made after its check found the folder free
        assert lock.claim(tmp_path / "new" / ".lock")
        with pytest.raises(WsmlError, match=r"--out .*new: a run is writing this folder \(process "):
            RunFolder(tmp_path / "new").create()
        assert not (tmp_path / "new" / "train.log").exists()
    finally:
        lock.release(run_copy / ".lock")
        lock.release(tmp_path / "new" / ".lock")
    assert RunFolder(run_copy).status()["state"] == "interrupted"
    RunFolder(tmp_path / "new").create()
    RunFolder(tmp_path / "new").release()


@pytest.mark.parametrize(
    "text", ['["running"]', '{"state": "running", "pid": "abc", "host": "' + socket.gethostname() + '"}', "runn"]
)
def test_a_damaged_status_is_one_line_and_resuming_rewrites_it(run_copy: Path, text: str) -> None:
    (run_copy / "status.json").write_text(text)
    if '"abc"' in text:  # a process id that is no number plays no part
        assert RunFolder(run_copy).status()["state"] == "interrupted"
    else:
        line = error_of("eval", run_copy)
        assert line == (
            f"error: {run_copy / 'status.json'}: not a status wsml wrote (a JSON object with a 'state'); delete it, "
            f"or `wsml train --resume {run_copy}` writes it again"
        )
    RunFolder.for_resume(run_copy, writes=True).release()  # status.json has no say in resuming


def test_without_file_locks_a_run_goes_on_and_its_status_is_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(*args) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    run = RunFolder(tmp_path / "run")
    run.create()
    assert run.unlocked
    run.write_status("running")
    assert run.status()["state"] == "running"


def test_stale_temporary_files_of_killed_writes_are_removed_on_resuming(run_copy: Path) -> None:
    stale, others = run_copy / ".metrics.csv.a1b2_c3d.tmp", [run_copy / ".preds.csv.a1b2c3d4.tmp", run_copy / "x.tmp"]
    for path in (stale, *others):
        path.write_text("half")
    RunFolder.for_resume(run_copy, writes=True).release()
    assert not stale.exists() and all(path.exists() for path in others)


def test_a_folder_is_never_given_advice_it_then_refuses(trained_run: Path, demo_folder: Path, tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(trained_run / "config.yaml", started)  # a run that stopped before its first epoch completed
    assert error_of("train", "--data", demo_folder, "--out", started) == (
        f"error: --out {started}: already holds a run; choose another folder (it completed no epoch: remove "
        f"{started} to start again there)"
    )
    assert "--resume" in error_of("train", "--resume", started)  # (which indeed refuses: nothing to continue)
    line = error_of("train", "--data", demo_folder, "--out", trained_run)
    assert line.endswith(f"(`wsml train --resume {trained_run}` continues it)")


def test_resume_without_the_best_weights_is_refused_before_training(trained_run: Path, run_copy: Path) -> None:
    """A finished run extended, or an interrupted one, whose model.pth was deleted: its best epoch may stay the best,
    and the run would fail at its end (then a finished run's old results.json said it was finished)."""
    finished = run_copy.with_name("finished")
    shutil.copytree(trained_run, finished)
    for run, extra in ((run_copy, []), (finished, ["--epochs", "3"])):
        (run / "model.pth").unlink()
        assert error_of("train", "--resume", run, *extra) == (
            f"error: --resume {run}: model.pth (the best epoch's weights) is missing (it was deleted or moved); put "
            "it back, or train the run again in a new folder"
        )
        assert not (run / ".lock").exists() or lock.probe(run / ".lock") is False  # (let go)


# --- resume refuses changed inputs ---


def test_resume_refuses_a_hand_edited_setting_naming_both_values(run_copy: Path) -> None:
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.001\n", "lr: 0.5\n"))
    assert error_of("train", "--resume", run_copy) == (
        f"error: --resume {run_copy}: config.yaml has lr: 0.5 but the run was trained with lr: 0.001 (its "
        "checkpoint.pth); put config.yaml back as it was, or start a new run with the new value"
    )


def test_resume_refuses_another_number_of_processes(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert error_of("train", "--resume", run_copy).startswith("error: WORLD_SIZE=2 but this process cannot join")
    monkeypatch.setattr(run_module, "decided_together", lambda process: contextlib.nullcontext())  # (as if joined)
    assert error_of("train", "--resume", run_copy).endswith(
        "the run was trained by 1 process and this launch has 2; resume it as it was launched: "
        "`wsml train --resume`, without torchrun"
    )
    meta = torch.load(run_copy / "checkpoint.pth", weights_only=True)["meta"]
    run = RunFolder(run_copy)
    with pytest.raises(WsmlError, match="trained by 2 processes and this launch has 1; .*torchrun with 2 processes"):
        check_launch(run, meta | {"world_size": 2}, Process())
    check_launch(run, {k: v for k, v in meta.items() if k != "world_size"}, Process())  # older: one process


@pytest.mark.parametrize(
    ("name", "says"),
    [("truth.csv", r"the truth labels \(.*truth.csv\)"), ("observed.csv", r"the labels in .*observed\.csv")],
)
def test_resume_refuses_changed_labels_naming_the_file(
    run_copy: Path, demo_folder: Path, tmp_path: Path, name: str, says: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_folder, data, ignore=shutil.ignore_patterns("images"))
    (data / "images").symlink_to(demo_folder / "images")
    lines = (data / name).read_text().splitlines()
    cells = lines[1].split(",")
    cells[-1] = "0" if cells[-1] == "1" else "1"  # one label changed
    (data / name).write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    run = RunFolder(run_copy)
    meta = run.load_checkpoint()["meta"]
    with pytest.raises(WsmlError, match=f"--resume {run_copy}: {says} changed since the run started"):
        set_up(run.config(), from_folder(data), run, resumed=meta)
