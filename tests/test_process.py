"""The process's decisions, made once (`launched`), and the process-wide switches: set by the commands only,
and put back; a library call leaves them as it found them."""

import importlib
import os
import warnings
from pathlib import Path

import huggingface_hub.constants
import matplotlib
import pytest
import torch

import wsml_fast.model.classifier as model_module
from wsml_fast.cli import friendly
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process, launched, process_switches
from wsml_fast.data.sources import from_folder
from wsml_fast.training.config import resolve
from wsml_fast.training.run import train
from wsml_fast.training.runfolder import RunFolder


def test_a_launched_process_is_torchruns_and_only_process_0_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = launched()
    assert (alone.rank, alone.world_size, alone.writes, alone.parallel) == (0, 1, True, False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    second = launched("fp32")
    assert (second.rank, second.world_size, second.writes, second.parallel) == (1, 2, False, True)
    assert second.precision == "fp32"


def test_precision_is_resolved_for_the_processs_device() -> None:
    cpu = Process()
    assert cpu.with_precision("auto").precision == "fp32" and cpu.with_precision("bf16").precision == "bf16"
    with pytest.raises(WsmlError, match="--precision fp16 needs a CUDA GPU"):
        cpu.with_precision("fp16")
    assert Process(device=torch.device("cuda", 0)).with_precision("auto").precision == "fp16"


def test_a_process_that_does_not_write_neither_writes_nor_speaks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = RunFolder.check_new(tmp_path / "run", writes=False)
    run.create()("a line")
    run.write_status("running")
    assert not (tmp_path / "run").exists() and capsys.readouterr().out == ""


def test_the_commands_switches_are_put_back() -> None:
    benchmark = torch.backends.cudnn.benchmark
    with process_switches(Process(), autotune=True) as process:
        assert process == Process()
    assert torch.backends.cudnn.benchmark == benchmark
    filters, seen = list(warnings.filters), []

    @friendly
    def command() -> None:
        seen.append(warnings.filters[0])

    command()
    action, _, category, module, _ = seen[0]
    assert action == "ignore" and category is FutureWarning and module.match("timm.models")  # for the whole command
    assert warnings.filters == filters


def test_importing_the_command_line_sets_no_warning_filter() -> None:
    import wsml_fast.cli

    filters = list(warnings.filters)
    importlib.reload(wsml_fast.cli)
    assert warnings.filters == filters


def _switches() -> tuple:
    return (
        os.environ.get("HF_HUB_OFFLINE"),
        huggingface_hub.constants.HF_HUB_OFFLINE,
        matplotlib.get_backend(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )


@pytest.fixture
def svg_backend():
    """A backend other than Agg, so that a library switching to Agg would be seen."""
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(previous)


@pytest.mark.usefixtures("svg_backend")
def test_a_library_call_leaves_the_process_switches_as_it_found_them(
    demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _switches()
    cli = {"data": str(demo_folder), "backbone": "test_efficientnet", "pretrained": False, "img_size": 32}
    cli |= {"bs": 16, "epochs": 1, "track_memorization": True, "out": str(tmp_path / "run")}
    train(resolve(None, None, cli), from_folder(demo_folder), process=Process())
    assert (tmp_path / "run" / "memorization.png").is_file()  # a figure was drawn
    monkeypatch.setattr(model_module, "_hub_reachable", lambda: False)  # the hub offline: the cache alone
    with pytest.raises(WsmlError, match="pretrained weights could not be fetched"):
        model_module.create_body("test_efficientnet", pretrained=True, weights=None)
    assert _switches() == before
