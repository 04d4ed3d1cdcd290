"""`wsml export`: a model file as ONNX or TorchScript, to tag images without wsml (and, with ONNX, without torch).

The exported graph is the classifier followed by a sigmoid. Input `images`: uint8, N x 3 x H x W, RGB, H = W = the
model's input size, normalized inside the graph as wsml does it. Output `probabilities`: float32, N x C. The batch
size is free. The class names, the per-class thresholds and the input size travel inside the file (ONNX metadata
properties; a `wsml.json` extra file in TorchScript), so the exported file alone is enough to tag images.

Each export is checked before it is put in place: the written file is loaded (onnxruntime on the CPU, or
`torch.jit.load`), and its probabilities on random images in batches of 2 and 3 (3 proves the batch size is free)
must be within 1e-4 of PyTorch's, else nothing is written.

ONNX comes from torch's TorchScript-based exporter (`dynamo=False`). On torch 2.14 it exports test_efficientnet,
tf_efficientnet_lite0, ResNets and the BoostLU head in about a second with no package beyond onnx, to the same
parity; the torch.export-based exporter needs `onnxscript` as well and took 5 to 7 times as long on the same models.
torch marks the TorchScript-based one deprecated: should it go, `dynamo=True` (and onnxscript in the `export`
extra) is the change to make, and the check below stays as it is.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from wsml_fast.core.atomic import atomic_write
from wsml_fast.core.errors import WsmlError
from wsml_fast.inference.outputs import check_output_file
from wsml_fast.model.modelfile import ModelFile
from wsml_fast.training.runfolder import WEIGHTS

INPUT, OUTPUT = "images", "probabilities"
OPSET = 17  # read by onnxruntime since 1.14 (2023), so the file runs on older runtimes too
TOLERANCE = 1e-4  # the largest absolute difference from PyTorch's probabilities an export may have
CHECK_BATCHES = (2, 3)  # batch sizes of the check: the graph is traced at the first
EXTRA_FILE = "wsml.json"  # TorchScript: the extra file that holds the metadata


class Probabilities(nn.Module):
    """The classifier followed by a sigmoid: what an exported file computes."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(images))


@dataclass(frozen=True)
class Exported:
    path: Path
    fmt: str
    size: int  # bytes
    difference: float  # the largest absolute difference from PyTorch's probabilities on the check's images

    def line(self) -> str:
        batches = " and ".join(str(b) for b in CHECK_BATCHES)
        return (
            f"wrote {self.path} ({self.fmt}, {self.size / 2**20:.2f} MiB): probabilities within "
            f"{self.difference:.1e} of PyTorch's on random images in batches of {batches}"
        )


def description(model_file: ModelFile) -> dict[str, Any]:
    """What a tagger needs beside the graph. `wsml_version` is the wsml that wrote the model file."""
    spec = model_file.spec
    return {
        "classes": list(spec.classes),
        "thresholds": list(model_file.thresholds),
        "threshold_rule": model_file.threshold_rule,
        "img_size": spec.img_size,
        "backbone": spec.backbone,
        "head": spec.head,
        "wsml_version": model_file.version,
    }


def onnx_properties(described: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata values are strings: the lists (and the size) as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in described.items()}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Withhold the exporters' deprecation and tracer notices, and the legacy ONNX exporter's C++ log, which prints
    the whole graph to the process's standard output when an export fails (torch 2.14 turns that log on for every
    export). The check after the export and the one-line error say what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _write_onnx(model: nn.Module, example: torch.Tensor, handle: BinaryIO, described: dict[str, Any]) -> None:
    import onnx

    graph = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        graph,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    proto = onnx.load_from_string(graph.getvalue())
    onnx.helper.set_model_props(proto, onnx_properties(described))
    handle.write(proto.SerializeToString())


def _run_onnx(path: Path, batches: list[torch.Tensor]) -> list[np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch (OMP_NUM_THREADS) has
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run([OUTPUT], {INPUT: batch.numpy()})[0] for batch in batches]


def _write_torchscript(model: nn.Module, example: torch.Tensor, handle: BinaryIO, described: dict[str, Any]) -> None:
    traced = torch.jit.trace(model, (example,), check_trace=False)  # the check below runs the saved file instead
    torch.jit.save(traced, handle, _extra_files={EXTRA_FILE: json.dumps(described)})


def _run_torchscript(path: Path, batches: list[torch.Tensor]) -> list[np.ndarray]:
    with _quiet_exporter(), torch.no_grad():
        loaded = torch.jit.load(str(path), map_location="cpu")
        return [loaded(batch).numpy() for batch in batches]


@dataclass(frozen=True)
class Format:
    write: Callable[[nn.Module, torch.Tensor, BinaryIO, dict[str, Any]], None]
    run: Callable[[Path, list[torch.Tensor]], list[np.ndarray]]  # the written file's probabilities


FORMATS = {"onnx": Format(_write_onnx, _run_onnx), "torchscript": Format(_write_torchscript, _run_torchscript)}


def check_format(fmt: str) -> None:
    """An unknown format, or ONNX without its packages, is refused before anything is loaded."""
    if fmt not in FORMATS:
        raise WsmlError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise WsmlError(
                "--format onnx needs the packages onnx and onnxruntime: pip install 'wsml-fast[export]'"
            ) from None


def check_target(out: Path, model: Path) -> None:
    """Before anything is exported: `--out` is a file in an existing folder, neither MODEL's model file nor one of
    a run folder's own files."""
    source = model / WEIGHTS if model.is_dir() else model
    if out.resolve() == source.resolve():
        raise WsmlError(f"--out {out}: is the model file being exported; write the export to another file")
    check_output_file(out, "the export", "model.onnx")


def _check_batches(img_size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (3, img_size, img_size)
    return [torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator) for n in CHECK_BATCHES]


def _export_failure(exc: Exception, fmt: str, backbone: str) -> WsmlError:
    """One line for an exporter's error; for ONNX, the operator it has no form for, when the message names it."""
    text = str(exc).strip()
    operator = re.search(r"operator '([^']+)'", text)
    if fmt == "onnx" and operator:
        return WsmlError(
            f"--format onnx: backbone {backbone} uses the operator {operator.group(1)}, which ONNX opset {OPSET} "
            "cannot express; use --format torchscript"
        )
    first = text.splitlines()[0][:160] if text else ""
    return WsmlError(f"--format {fmt}: backbone {backbone} could not be exported ({exc.__class__.__name__}: {first})")


def _largest_difference(got: list[np.ndarray], expected: list[np.ndarray], out: Path, fmt: str) -> float:
    for mine, theirs in zip(got, expected, strict=True):
        if mine.shape != theirs.shape:
            raise WsmlError(
                f"{out}: the exported {fmt} model gives {mine.shape} probabilities for a batch of {theirs.shape[0]} "
                f"images, PyTorch {theirs.shape}; nothing written"
            )
    return max(float(np.abs(mine - theirs).max()) for mine, theirs in zip(got, expected, strict=True))


def export_model(model_file: ModelFile, fmt: str, out: Path, say: Callable[[str], None]) -> Exported:
    """Write `model_file` to `out` in format `fmt` (onnx or torchscript), checked against PyTorch before it is put
    in place; says what it exports and, at the end, what it wrote."""
    check_format(fmt)
    out, spec, exporter = Path(out), model_file.spec, FORMATS[fmt]
    model = Probabilities(model_file.classifier("cpu"))
    batches = _check_batches(spec.img_size)
    with torch.no_grad():
        expected = [model(batch).numpy() for batch in batches]
    say(f"exporting {spec.backbone} ({spec.head} head, {len(spec.classes)} classes, {spec.img_size} px) to {fmt}")
    difference = float("nan")

    def write(handle: BinaryIO) -> None:
        try:
            with _quiet_exporter(), torch.no_grad():
                exporter.write(model, batches[0], handle, description(model_file))
        except OSError:  # the file could not be written: atomic_write says why
            raise
        except Exception as exc:  # noqa: BLE001 - any exporter failure is the backbone's, said in one line
            raise _export_failure(exc, fmt, spec.backbone) from None

    def check(written: Path) -> None:
        nonlocal difference
        try:
            got = exporter.run(written, batches)
        except Exception as exc:  # noqa: BLE001 - a file its own runtime cannot run is refused, whatever the cause
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise WsmlError(
                f"{out}: the exported {fmt} file does not run ({exc.__class__.__name__}: {first}); nothing written"
            ) from None
        difference = _largest_difference(got, expected, out, fmt)
        if not difference <= TOLERANCE:
            raise WsmlError(
                f"{out}: the exported {fmt} model's probabilities differ from PyTorch's by up to {difference:.1e} "
                f"(at most {TOLERANCE:g} is allowed); nothing written"
            )

    atomic_write(out, write, check)
    exported = Exported(out, fmt, out.stat().st_size, difference)
    say(exported.line())
    return exported
