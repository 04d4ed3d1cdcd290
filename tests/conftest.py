"""Shared fixtures: a small demo dataset made once per session, and a private data home; shared helpers."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from wsml_fast.demo import make_demo_dataset
from wsml_fast.stopping import StopRequest

SMALL = {"train": 48, "valid": 16, "test": 16}


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo dataset folder with few images (same code path as the full one)."""
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo-small", seed=1, sizes=SMALL)


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's ~/.cache/wsml from a test."""
    monkeypatch.setenv("WSML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class StopAfter(StopRequest):
    """A SIGTERM that arrives after `batches` batch boundaries."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    def __call__(self) -> bool:
        self.left -= 1
        if self.left < 0:
            self.signum = signal.SIGTERM
        return super().__call__()
