"""Shared fixtures: a small demo dataset and a tiny run trained on it, made once per session, and a private data
home (helpers: helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, invoke

from wsml_fast.data.demo import make_demo_dataset

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


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's ~/.cache/wsml from a test."""
    monkeypatch.setenv("WSML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
