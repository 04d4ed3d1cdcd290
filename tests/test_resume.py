"""`wsml train --resume`: a run SIGKILLed during epoch 3 of 4 and resumed ends exactly as an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import HOOKED, TINY, hooked_env, invoke

CASES = {  # scheme with state, workers, schedule and mode: each value at least once
    "an-0-workers-one-cycle": ["--scheme", "an", "--workers", "0", "--schedule", "one-cycle", "--track-memorization"],
    "llcp-0-workers-constant": ["--scheme", "llcp", "--delta-rel", "0.5", "--workers", "0", "--schedule", "constant"],
    "role-2-workers-one-cycle": ["--scheme", "role", "--workers", "2", "--schedule", "one-cycle"],
    # LogicMix's draws (its own generator, checkpointed) and LL-Cp storing the selections of unmixed images only
    "llcp-logicmix-of-3": [
        "--scheme",
        "llcp",
        "--delta-rel",
        "0.5",
        "--workers",
        "0",
        "--mix",
        "logicmix",
        "--mix-n",
        "3",
    ],
    # killed in the first epoch of the end-to-end stage: resumes from the best linear epoch, as the run did
    "linear-init-between-stages": [
        "--mode",
        "linear-init",
        "--linear-epochs",
        "2",
        "--epochs",
        "2",
        "--scheme",
        "role",
    ],
    # the average and its step count are checkpointed; 3 batches an epoch, accumulated 2 by 2 (the last steps alone)
    "ema-accumulate": ["--ema", "0.9", "--accumulate", "2", "--workers", "0"],
    # killed in the second epoch of the end-to-end stage, whose average began at the best linear epoch
    "linear-init-ema-in-the-second-stage": [
        "--mode",
        "linear-init",
        "--linear-epochs",
        "1",
        "--epochs",
        "3",
        "--ema",
        "0.9",
    ],
}


def kill_during(epoch: int, batch: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(HOOKED), "train", *map(str, args)]
    env = hooked_env(WSML_KILL_AT=f"{epoch},{batch}")
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def state_of(run: Path) -> dict:
    """What must be identical: metrics but the times, the best weights' bytes, the last weights, the schemes'
    state and the run's other files."""
    metrics = pd.read_csv(run / "metrics.csv")
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)
    state = {
        "metrics": metrics[[c for c in metrics.columns if "seconds" not in c]],
        "model.pth": (run / "model.pth").read_bytes(),
        "last weights": checkpoint["model"],
        "callbacks": checkpoint["callbacks"],
    }
    for name in ("corrected_labels.csv", "memorization.csv", "scheme_state.pt"):
        if (run / name).exists():
            state[name] = (run / name).read_bytes()
    return state


@pytest.mark.parametrize("case", CASES)
def test_killed_in_epoch_3_of_4_and_resumed_equals_the_uninterrupted_run(
    case: str, demo_folder: Path, tmp_path: Path
) -> None:
    args = ["--data", demo_folder, *TINY, "--epochs", "4", "--lr", "0.01", *CASES[case]]
    assert invoke("train", *args, "--out", tmp_path / "whole").exit_code == 0

    killed = kill_during(3, 1, *args, "--out", tmp_path / "killed")
    assert killed.returncode == -9, killed.stderr
    assert torch.load(tmp_path / "killed" / "checkpoint.pth", weights_only=True)["meta"]["epoch"] == 2
    resumed = invoke("train", "--resume", tmp_path / "killed")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "after epoch 2 of 4" in resumed.output

    whole, again = state_of(tmp_path / "whole"), state_of(tmp_path / "killed")
    assert list(whole["metrics"]["epoch"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(whole.pop("metrics"), again.pop("metrics"))
    assert whole.keys() == again.keys()
    for name in whole:  # tensors and numbers exactly; the texts in the callbacks' states (a stage's inputs) alike
        (tensors, texts), (resumed_tensors, resumed_texts) = (_split_texts(state[name]) for state in (whole, again))
        torch.testing.assert_close(tensors, resumed_tensors, rtol=0, atol=0, msg=name)
        assert texts == resumed_texts, name


def _split_texts(state):
    """`state` with its texts set to None, and the texts."""
    leaves, spec = torch.utils._pytree.tree_flatten(state)
    texts = [leaf for leaf in leaves if isinstance(leaf, str)]
    return torch.utils._pytree.tree_unflatten([None if isinstance(x, str) else x for x in leaves], spec), texts
