"""`wsml export`: ONNX and TorchScript files that give PyTorch's probabilities for any batch size and carry the
classes, thresholds and input size; bad output paths, a missing extra, an operator ONNX cannot express and a
failed parity check each refused in one line with nothing written; the documented onnxruntime snippet runs."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from helpers import error_of, invoke
from PIL import Image

from wsml_fast.data.loaders import load_rgb, make_transform
from wsml_fast.inference import export
from wsml_fast.model.modelfile import ModelFile, ModelSpec

SIZE = 32
CLASSES = ("a", "b", "c")
DECISIONS_PAGE = Path(__file__).parents[1] / "docs" / "decisions.md"


def model_file(boost_lu: float | None = None, thresholds: tuple[float, ...] = (0.5, 0.4, 0.6)) -> ModelFile:
    spec = ModelSpec("test_efficientnet", CLASSES, SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), boost_lu)
    torch.manual_seed(0)
    weights = spec.build().state_dict()
    weights["head.weight"] = torch.randn(weights["head.weight"].shape) * 50  # probabilities well apart from 0.5
    return ModelFile(spec, weights, list(thresholds), "f1", {"scheme": "an"})


def run_folder(folder: Path, model: ModelFile) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text("scheme: an\n")
    model.save(folder / "model.pth")
    return folder


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def pytorch_probabilities(model: ModelFile, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model.classifier()(batch)).numpy()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"plain": run_folder(root / "plain", model_file()), "boost-lu": run_folder(root / "boost", model_file(5.0))}


@pytest.mark.parametrize("head", ["plain", "boost-lu"])
def test_onnx_gives_pytorchs_probabilities_for_any_batch_size(runs, tmp_path, head) -> None:
    out = tmp_path / "model.onnx"
    result = invoke("export", runs[head], "--out", out)
    assert result.exit_code == 0, result.output
    figure = re.search(r"wrote .*model.onnx \(onnx, \d+\.\d\d MiB\): probabilities within (\S+) of", result.stdout)
    assert figure and float(figure.group(1)) <= 1e-4, result.stdout
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (given,), (taken,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == ("images", "tensor(uint8)", [3, SIZE, SIZE])
    assert (taken.name, taken.type) == ("probabilities", "tensor(float)")
    trained = ModelFile.load(runs[head] / "model.pth")
    for n in (1, 3):
        batch = images(n, seed=n)
        got = session.run(["probabilities"], {"images": batch.numpy()})[0]
        assert got.shape == (n, len(CLASSES)) and got.dtype == np.float32
        assert np.abs(got - pytorch_probabilities(trained, batch)).max() <= 1e-4


def test_onnx_metadata_names_classes_thresholds_and_size(runs, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    assert invoke("export", runs["plain"] / "model.pth", "--format", "onnx", "--out", out).exit_code == 0
    meta = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta()
    properties = meta.custom_metadata_map
    assert json.loads(properties["classes"]) == list(CLASSES)
    assert json.loads(properties["thresholds"]) == [0.5, 0.4, 0.6]
    assert int(properties["img_size"]) == SIZE
    assert properties["threshold_rule"] == "f1"
    assert properties["wsml_version"] == ModelFile.load(runs["plain"] / "model.pth").version


def test_torchscript_round_trip_with_metadata(runs, tmp_path) -> None:
    out = tmp_path / "model.pt"
    result = invoke("export", runs["boost-lu"], "--format", "torchscript", "--out", out)
    assert result.exit_code == 0, result.output
    extra = {export.EXTRA_FILE: ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    described = json.loads(extra[export.EXTRA_FILE])
    assert described["classes"] == list(CLASSES) and described["thresholds"] == [0.5, 0.4, 0.6]
    assert described["img_size"] == SIZE
    trained = ModelFile.load(runs["boost-lu"] / "model.pth")
    for n in (1, 3):
        batch = images(n, seed=10 + n)
        with torch.no_grad():
            got = loaded(batch).numpy()
        assert got.shape == (n, len(CLASSES))
        assert np.abs(got - pytorch_probabilities(trained, batch)).max() <= 1e-4


@pytest.mark.parametrize(
    ("target", "fmt", "says"),
    [
        ("missing/model.onnx", "onnx", "folder .*missing does not exist"),
        (".", "onnx", "is a folder"),
        ("plain/model.pth", "onnx", "is the model file being exported"),
        ("plain/config.yaml", "onnx", "is a file of the run folder"),
        ("model.onnx", "tflite", "--format 'tflite' is not one of: onnx, torchscript"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(runs, target, fmt, says) -> None:
    root = runs["plain"].parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    line = error_of("export", runs["plain"], "--format", fmt, "--out", root / target)
    assert re.search(says, line), line
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_a_run_without_a_model_file_is_named(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text("scheme: an\n")
    line = error_of("export", tmp_path, "--out", tmp_path.parent / "out.onnx")
    assert f"{tmp_path}: no trained weights yet (the run is in, or stopped in, its first epoch)" in line


def test_onnx_without_its_packages_names_the_extra(runs, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    line = error_of("export", runs["plain"], "--out", tmp_path / "model.onnx")
    assert "pip install 'wsml-fast[export]'" in line
    assert not list(tmp_path.iterdir())


class BesselHead(torch.nn.Module):
    """A model using an operator (the Bessel function i0) that ONNX has no form for."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(images.float().mean((2, 3)) / 255)


def test_an_operator_onnx_cannot_express_is_named(runs, tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.setattr(ModelFile, "classifier", lambda self, device="cpu": BesselHead().eval())
    line = error_of("export", runs["plain"], "--out", tmp_path / "model.onnx")
    assert "uses the operator aten::i0, which ONNX opset 17 cannot express; use --format torchscript" in line
    assert not list(tmp_path.iterdir())
    assert "graph" not in capfd.readouterr().out  # the exporter's C++ dump of the graph is withheld


def test_an_export_off_by_more_than_the_tolerance_is_refused_and_the_old_file_kept(runs, tmp_path, monkeypatch):
    onnx = export.FORMATS["onnx"]
    off = replace(onnx, run=lambda path, batches: [p + 1e-3 for p in onnx.run(path, batches)])
    monkeypatch.setitem(export.FORMATS, "onnx", off)
    out = tmp_path / "model.onnx"
    out.write_text("the previous export")
    line = error_of("export", runs["plain"], "--out", out)
    assert "differ from PyTorch's by up to 1.0e-03 (at most 0.0001 is allowed); nothing written" in line
    assert out.read_text() == "the previous export" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def documented_snippet() -> str:
    """The first python block after the heading "Exporting a model"."""
    text = DECISIONS_PAGE.read_text()
    section = text[text.index("## Exporting a model") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_snippet_prints_pytorchs_labels(tmp_path, monkeypatch) -> None:
    """Images at the input size (no resizing, where Pillow and wsml's OpenCV differ), read by wsml's own loader
    for PyTorch; thresholds set so that one class is printed for both images, one for neither, one for one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    names = ["dark.png", "light.png"]
    for name, lowest in zip(names, (0, 128), strict=True):
        image = rng.integers(lowest, lowest + 128, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / name)
    resize = make_transform(SIZE, train=False, hflip=False)
    read = [resize(image=load_rgb(tmp_path / "images" / name))["image"].transpose(2, 0, 1) for name in names]
    probabilities = pytorch_probabilities(model_file(), torch.from_numpy(np.stack(read)))
    low, high = probabilities.min(0), probabilities.max(0)
    assert high[2] - low[2] > 0.01, probabilities  # room for a threshold between the two images
    thresholds = tuple(float(t) for t in (low[0] - 0.001, high[1] + 0.001, (low[2] + high[2]) / 2))
    export.export_model(model_file(thresholds=thresholds), "onnx", tmp_path / "demo.onnx", lambda line: None)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(documented_snippet(), {})
    lines = printed.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == names
    for line, row in zip(lines, probabilities, strict=True):
        shown = dict(label.split(":") for label in line.split()[1:])
        expected = [c for c, p, t in zip(CLASSES, row, thresholds, strict=True) if p >= t]
        assert list(shown) == expected
        assert all(abs(float(shown[c]) - row[CLASSES.index(c)]) <= 0.0005 + 1e-4 for c in shown)
    assert sum(len(line.split()) - 1 for line in lines) == 3  # a in both, b in neither, c in one
