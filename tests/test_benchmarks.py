"""Every script under benchmarks/ runs: its `--smoke` mode (seconds, a tiny model and data in a temporary folder)
exits 0, prints the figures the full benchmark prints, and writes nothing into the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
BENCHMARKS = REPO / "benchmarks"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

FIGURES = {  # script: patterns its smoke's output must match (one line of figures each)
    "check_images.py": [r"threads  seconds  images/s\n +1 +\d+\.\d\d +[\d,]+\n +2 +\d+\.\d\d +[\d,]+"],
    "export.py": [
        r"wrote .*model.onnx \(onnx, \d+\.\d\d MiB\): probabilities within \d\.\de-\d\d of PyTorch's",
        r"\| PyTorch eager \| \d+\.\d \| \d+\.\d \|\n\| onnxruntime \(CPU\) \| \d+\.\d \| \d+\.\d \|",
        r"onnxruntime / PyTorch: \d+\.\d\dx; largest absolute difference of the probabilities on the batch: \d\.\de-",
    ],
    "scoring.py": [
        r"labelled entries kept: [\d,]+ ",
        r"adding the batches: \d+\.\d\d s; .*\(mAP \d+\.\d\d, 50 classes scored",
        r"sklearn class by class: \d+\.\d\d ms a class",
    ],
    "decisions.py": [
        r"\| thresholds \| OF1 \| CF1 \| OP \| CP \|",
        r"\| 0.5 for every class \| \d+\.\d\d \| \d+\.\d\d \|",
        r"\| f1 \| \d+\.\d\d \|",
        r"\| precision:0.9 \| \d+\.\d\d \|",
    ],
    "distributed.py": [r"2 processes \(gloo, CPU\)", r"\n +10 +\d+\.\d +\d+\.\d\d +\d+\.\d\d% +212\n +40 "],
    "report_screenshot.py": [
        r"report.html: \d+\.\d\d MB, written in \d+\.\d\d s; sections: run, curves, classes, best-worst, gallery, memo",
        r"gallery: [1-9]\d* images; added labels shown: \d+ right, \d+ wrong",
        r"screenshot: \S+report.png \(1280 x 2400 px, \d+ kB\)|screenshot skipped: no Chromium found",
    ],
    "resume_check.py": [
        r"killed with SIGKILL during epoch 3 \(\d epochs in metrics.csv; status: interrupted",
        r"\ntrain_loss +yes\n",
        r"\nvalid_map +yes\n",
        r"model.pth  uninterrupted (\w{16})  resumed \1\n",
        r"corrected_labels.csv equal: True",
    ],
    "scale.py": [
        r"300 rows x 40 classes: [\d,]+ entries",
        r"load_table +\d+\.\d s \| peak RSS",
        r"wsml train llcp  first batch after +\d+\.\d s",
        r"B = 8, C = 40, .* training step \d+ ms",
        r"llcp: large-loss work +\d+\.\d\d ms = \d+\.\d\d% of the step \(1,000 stored corrections\)",
        r"demo truth.csv: read_label_csv \d+\.\d\d ms",
    ],
    "complete_scale.py": [
        r"300 rows x 40 classes: [\d,]+ entries",
        r"load_table +\d+\.\d s \| peak RSS +\d+ MB",
        r"wsml complete +\d+\.\d s \| peak RSS +\d+ MB \(\+\d+ MB over load_table's\) \| [\d,]+ train and [\d,]+ valid",
        r"up to the writing +\d+\.\d s \| peak RSS +\d+ MB",
        r"train: added [\d,]+ positives to [\d,]+ images \| .* \| estimated on valid's entries weighted as train "
        r"leaves them unobserved: precision (\d\.\d{3}|-) held out \((\d\.\d{3}|-) where fitted\)",
    ],
    "schemes.py": [
        r"\| scheme \| test mAP \| ll_fn_precision \| train recovery mAP \| seconds per run \| averaged weights kept",
        r"\| `an` \| \d+\.\d\d \| - \| \d+\.\d\d \| \d+ \| 0 of 1 \|",
        r"\| `llct` \| \d+\.\d\d \|",
        r"\| `llr --ema 0.9` \| \d+\.\d\d \| [\d.-]+ \| \d+\.\d\d \| \d+ \| [01] of 1 \|",
        r"`iu` not run: --scheme iu trains on observed negatives",
        r"training step \(end-to-end, epochs 2\+, median of \d+ batches each\): an \d+\.\d ms, llct \d+\.\d ms",
    ],
    "verification_loop.py": [
        r"demo: 10 classes, 48 train images, [\d,]+ unobserved train entries \(\d+\.\d% of them positive\)",
        r"rare: 40 classes, 48 train images, ",
        r"\| strategy \| budget \| answers positive \| test mAP before \| after \| gain \|",
        r"\| `likely-positive` \| \d+ \(5%\) \| \d+\.\d% \| \d+\.\d\d \| \d+\.\d\d \| [+-]\d+\.\d\d \|",
        r"\| `uncertain` \| \d+ \(5%\) \| \d+\.\d% \| \d+\.\d\d \| \d+\.\d\d \| [+-]\d+\.\d\d \|",
        r"\| `random` \| \d+ \(5%\) \| \d+\.\d% \| \d+\.\d\d \| \d+\.\d\d \| [+-]\d+\.\d\d \|",
        r"goal at 5%: likely-positive gain [+-]\d+\.\d\d vs random [+-]\d+\.\d\d.*: (not )?met",
        r"complete --target-precision 0.9 \(train\): \d+ positives added, precision (\d\.\d{3}|-) and recall",
        r"on the training truth \((not )?within 0.05 of 0.9; estimated on valid held out (\d\.\d{3}|-)\)",
        r"test mAP trained on the completed labels \d+\.\d\d against \d+\.\d\d on the original ones; its thresholds",
        r"on the test split: precision (\d\.\d{3}|-) on all entries, (\d\.\d{3}|-) once one positive an image is taken",
    ],
    "throughput.py": [
        r"input pipeline, images/s per worker +\d+\.\d +\d+\.\d +\d+\.\d\dx",
        r"training step alone, images/s +\d+\.\d +\d+\.\d +\d+\.\d\dx",
        r"full training, images/s +\d+\.\d +\d+\.\d +\d+\.\d\dx",
        r"large-loss selection: \d+\.\d+% of a training step",
    ],
}


def repository_files() -> dict[Path, tuple[int, int]]:
    """Size and modification time of every file a benchmark could write into: benchmarks/, docs/ and README.md."""
    paths = [*BENCHMARKS.rglob("*"), *(REPO / "docs").rglob("*"), REPO / "README.md"]
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file() and "__pycache__" not in p.parts}


def test_every_benchmark_has_a_smoke() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - {"smoke.py"}
    assert scripts == set(FIGURES)


@pytest.mark.parametrize("script", sorted(FIGURES))
def test_the_smoke_runs_and_prints_its_figures(script: str) -> None:
    launcher = TORCHRUN if script == "distributed.py" else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    before = repository_files()
    done = subprocess.run(
        [*launcher, str(BENCHMARKS / script), "--smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for pattern in FIGURES[script]:
        assert re.search(pattern, done.stdout), f"{pattern!r} not in:\n{done.stdout}"
    assert "failed" not in done.stdout
    assert repository_files() == before
