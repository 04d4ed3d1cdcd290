"""Shared fixtures: a small demo dataset, a tiny run trained on it and one interrupted, made once per session, and
a private data home (helpers: helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, StopAfter, invoke

from wsml_fast.data.demo import make_demo_dataset
from wsml_fast.data.sources import from_folder
from wsml_fast.training.config import resolve
from wsml_fast.training.run import train
from wsml_fast.training.stopping import RunInterrupted

SMALL = {"train": 48, "valid": 16, "test": 16}


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo dataset folder with few images (same code path as the full one)."""
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo-small", seed=1, sizes=SMALL)


@pytest.fixture(scope="session")
def trained_run(demo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run on the small demo (2 epochs, test_efficientnet at 32 px), shared read-only: a test
    that changes it works on a copy."""
    out = tmp_path_factory.mktemp("runs") / "an"
    result = invoke("train", "--data", demo_folder, *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def interrupted_run(demo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run stopped by SIGTERM in epoch 3 of 4 (3 training + 1 validation batches per epoch), shared
    read-only: a test that changes it works on a copy."""
    out = tmp_path_factory.mktemp("runs") / "interrupted"
    cli = {"data": str(demo_folder), "backbone": "test_efficientnet", "pretrained": False, "img_size": 32}
    cli |= {"bs": 16, "epochs": 4, "out": str(out)}
    with pytest.raises(RunInterrupted) as stopped:
        train(resolve(None, None, cli), from_folder(demo_folder), StopAfter(2 * 4 + 1))
    assert stopped.value.exit_code == 143
    return out


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's ~/.cache/wsml from a test."""
    monkeypatch.setenv("WSML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
