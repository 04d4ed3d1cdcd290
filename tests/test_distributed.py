"""Data-parallel training on 2 processes (gloo on the CPU, as CI has no GPU): global batches, the large-loss
selection over them, runs equal to one process with the global batch, state identical on every process, one
run folder, a process death that takes the run down, and `--resume` under the same launch."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import HOOKED, hooked_env, invoke

from wsml_fast.core import lock
from wsml_fast.core.distributed import global_batch_order, shard
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process
from wsml_fast.data.sources import from_folder
from wsml_fast.schemes.large_loss.training import LargeLoss, large_loss_k, select_large_losses
from wsml_fast.training.config import resolve
from wsml_fast.training.learner import build_learner
from wsml_fast.training.parallel import check_global_batches
from wsml_fast.training.runfolder import RunFolder
from wsml_fast.training.setup import set_up

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
SELECTION = Path(__file__).with_name("ddp_selection.py")
# no batch norm (test_vit) and no augmentation: 2 processes x 8 must train as 1 process x 16
EXACT = ["--backbone", "test_vit", "--no-pretrained", "--img-size", "32", "--no-hflip", "--schedule", "constant"]
EXACT += ["--lr", "0.01", "--epochs", "3", "--delta-rel", "0.5"]


def torchrun(*args: str, timeout: int = 300, **hooks: str) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, str(HOOKED), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=hooked_env(**hooks))


def test_global_batches_are_the_batches_of_one_process_with_the_global_size() -> None:
    order = np.random.default_rng(0).permutation(50)
    parts = [global_batch_order(order, 4, 3, process) for process in range(3)]
    rebuilt = [np.concatenate([part[4 * j : 4 * j + 4] for part in parts]) for j in range(4)]
    assert np.array_equal(np.concatenate(rebuilt), order[:48])  # the incomplete last global batch is dropped
    shares = [shard(10, 3, process) for process in range(3)]
    assert np.array_equal(np.concatenate(shares), np.arange(10)) and {len(s) for s in shares} <= {3, 4}


def test_a_global_batch_larger_than_the_training_split_is_refused(demo_folder: Path, tmp_path: Path) -> None:
    """48 training images and 2 processes of 32: the incomplete global batch is dropped, so nothing would train
    (every epoch said `train_loss nan` and scored the untrained model)."""
    options = {"data": str(demo_folder), "backbone": "test_efficientnet", "pretrained": False, "img_size": 32}
    config = resolve(None, None, {**options, "bs": 32, "out": str(tmp_path / "run")})
    run = RunFolder.check_new(tmp_path / "run", writes=True)
    setup = set_up(config, from_folder(demo_folder), run, Process(world_size=2))
    with pytest.raises(WsmlError, match=r"= a global batch of 64 images, more than the 48 training images: .* 24 or"):
        build_learner(setup, None, [])
    check_global_batches(48, 24, 2)  # one whole global batch: trains
    with pytest.raises(WsmlError, match="add train rows or use fewer processes"):
        check_global_batches(3, 2, 2)


def test_the_selection_over_processes_is_what_one_process_selects(tmp_path: Path) -> None:
    command = [*TORCHRUN, str(SELECTION), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=hooked_env())
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    generator = torch.Generator().manual_seed(0)  # the script's global batch: 12 x 7, as one process sees it
    losses = torch.rand(12, 7, generator=generator).round(decimals=1)
    unobserved = torch.rand(12, 7, generator=generator) < 0.7
    k = large_loss_k(12, 7, 4, 9.0, LargeLoss.TEMPORARY_CORRECTION)
    expected = select_large_losses(losses.masked_fill(~unobserved, -math.inf), unobserved, k)
    assert int(expected.sum()) == k == math.ceil(12 * 7 * 3 * 9 / 100)
    assert torch.equal(torch.cat([ranks[0]["selected"], ranks[1]["selected"]]), expected)
    assert all(torch.equal(r["everyone"], expected) for r in ranks)


@pytest.mark.parametrize("scheme", ["an", "llct", "llcp"])
def test_two_processes_train_as_one_with_the_global_batch(
    scheme: str, demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    one = invoke("train", "--data", demo_folder, *EXACT, "--scheme", scheme, "--bs", "16", "--out", "one")
    assert one.exit_code == 0, one.output
    two = torchrun("train", "--data", demo_folder, *EXACT, "--scheme", scheme, "--bs", "8", "--out", "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data parallel: 2 processes | global batch 8 x 2 = 16" in two.stdout
    assert two.stdout.count("run folder: ") == 1  # one process speaks
    single, double = pd.read_csv("one/metrics.csv"), pd.read_csv("two/metrics.csv")
    columns = [c for c in single.columns if "seconds" not in c and not c.endswith("map")]
    pd.testing.assert_frame_equal(single[columns], double[columns], rtol=1e-4)
    # mAP ranks scores: two processes sum in another order, and two nearly tied scores may swap (hundredths)
    np.testing.assert_allclose(single["valid_map"], double["valid_map"], atol=0.1)
    if scheme == "llcp":
        assert Path("one/corrected_labels.csv").read_text() == Path("two/corrected_labels.csv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one run folder each: nothing else


def test_two_processes_accumulating_train_as_one_with_the_effective_batch(
    demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    one = invoke("train", "--data", demo_folder, *EXACT, "--bs", "16", "--ema", "0.9", "--out", "one")
    assert one.exit_code == 0, one.output
    two = torchrun(
        "train", "--data", demo_folder, *EXACT, "--bs", "4", "--accumulate", "2", "--ema", "0.9", "--out", "two"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "effective batch 4 x 2 x 2 = 16" in two.stdout
    single, double = pd.read_csv("one/metrics.csv"), pd.read_csv("two/metrics.csv")
    # the smoothed training loss runs over forward batches: 2 x 2 of them make one of the single process's
    columns = [c for c in single.columns if "seconds" not in c and not c.endswith(("map", "map_ema", "train_loss"))]
    pd.testing.assert_frame_equal(single[columns], double[columns], rtol=1e-4)
    for column in ("valid_map", "valid_map_ema"):  # the average too, scored over both processes' shares
        np.testing.assert_allclose(single[column], double[column], atol=0.1)


@pytest.mark.parametrize("scheme", ["llcp", "role", "em-apl", "role --accumulate 2"])
def test_stored_state_is_the_same_on_every_process(scheme: str, demo_folder: Path, tmp_path: Path) -> None:
    args = ["--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32", "--bs", "8", "--epochs", "3"]
    args += ["--scheme", *scheme.split(), "--delta-rel", "0.5", "--apl-warmup", "1"]
    result = torchrun("train", "--data", demo_folder, *args, "--out", tmp_path / "run", WSML_DUMP_STATES=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    flat = [torch.utils._pytree.tree_flatten(state)[0] for state in states]
    assert len(flat[0]) == len(flat[1]) > 0
    changed = [a for a in flat[0] if torch.is_tensor(a) and a.numel()]
    assert changed, "the scheme stored nothing"
    for a, b in zip(*flat, strict=True):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_a_process_that_dies_takes_the_run_down_and_resume_continues(demo_folder: Path, tmp_path: Path) -> None:
    args = ["--data", demo_folder, "--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32"]
    args += ["--bs", "8", "--epochs", "3", "--scheme", "llcp", "--delta-rel", "0.5", "--out", tmp_path / "run"]
    died = torchrun("train", *args, timeout=180, WSML_KILL_AT="2,1,1")  # rank 1, epoch 2, its second batch
    assert died.returncode != 0 and "(SIGKILL)" in died.stderr  # no hang: torchrun ends the rest
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1]
    resumed = torchrun("train", "--resume", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1 of 3" in resumed.stdout
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_bf16_mixed_precision_trains_under_two_processes(demo_folder: Path, tmp_path: Path) -> None:
    args = ["--data", demo_folder, "--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32"]
    args += ["--bs", "8", "--epochs", "2", "--scheme", "llct", "--precision", "bf16", "--out", tmp_path / "run"]
    result = torchrun("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cpu bf16" in result.stdout and "global batch 8 x 2 = 16" in result.stdout
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and np.isfinite(metrics["train_loss"]).all()
    assert metrics["ll_selected"].iloc[-1] > 0  # the selection over the global batch ran on bf16 logits


def test_a_ctrl_c_of_the_launch_stops_every_process_cleanly(demo_folder: Path, tmp_path: Path) -> None:
    args = ["--data", demo_folder, "--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32"]
    args += ["--bs", "8", "--epochs", "3", "--out", tmp_path / "run"]
    pause = tmp_path / "go"
    launch = subprocess.Popen(  # a session of its own: the Ctrl-C goes to its process group, as a terminal's does
        [*TORCHRUN, str(HOOKED), "train", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=hooked_env(WSML_PAUSE_AT=f"2,0,{pause}"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not Path(f"{pause}.reached").exists() and time.monotonic() < deadline and launch.poll() is None:
        time.sleep(0.05)
    workers = Path(f"/proc/{launch.pid}/task/{launch.pid}/children").read_text().split()
    os.killpg(launch.pid, signal.SIGINT)  # a Ctrl-C: torchrun passes the SIGINT on to its processes ...
    time.sleep(0.5)
    for worker in workers:  # ... and may follow it with a SIGTERM: the same request, not a second one
        os.kill(int(worker), signal.SIGTERM)
    time.sleep(0.5)
    pause.touch()
    stdout, stderr = launch.communicate(timeout=120)
    line = f"continue with: torchrun [the same launch options] -m wsml_fast train --resume {tmp_path / 'run'}"
    assert stdout.count(line) == 1, stdout + stderr[-3000:]  # said once, by process 0
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["reason"] == "SIGINT"
    assert "another process" not in stderr and pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1]


def test_a_run_folder_process_0_cannot_claim_stops_every_process_at_once(interrupted_run: Path, tmp_path: Path) -> None:
    """Process 0 alone claims the folder; process 1, whose own checks all pass, must hear of the refusal and stop
    with it (it used to wait in its first collective until torchrun killed it: SIGTERM, then SIGKILL 30 s later)."""
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)
    checkpoint["meta"]["world_size"] = 2  # (a run of 2 processes, so that process 1 finds nothing wrong)
    torch.save(checkpoint, run / "checkpoint.pth")
    assert lock.claim(run / ".lock")  # another run holds the folder
    try:
        result = torchrun("train", "--resume", run, timeout=240)
    finally:
        lock.release(run / ".lock")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count(f"error: --resume {run}: the run is still running (process {os.getpid()} ") == 1
    assert "SIGKILL" not in result.stderr and "Unable to shutdown" not in result.stderr, result.stderr[-3000:]


def test_an_error_before_training_is_said_by_process_0_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    result = invoke("train", "--lr", "nan")
    assert result.exit_code == 2 and result.stderr == ""
    monkeypatch.setenv("RANK", "0")
    assert invoke("train", "--lr", "nan").stderr == "error: --lr must be a finite number (got nan)\n"
