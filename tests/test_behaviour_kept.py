"""Behaviour kept across refactoring: every registered scheme (and BoostLU, linear-init, LL-Cp with workers)
trains a short, seeded demo run to the end, and its metrics.csv and scheme files equal those recorded before the
change (the registry's `iu` needs observed negatives, which the demo has none of: test_schemes shows it refused).

The recorded files are in tests/data/behaviour_kept/. They were written by this test with
`WSML_RECORD_BEHAVIOUR=1 python -m pytest tests/test_behaviour_kept.py` at a commit whose behaviour was the
reference; only a deliberate change of training behaviour may record them again. One thread, no workers
(unless the case names them): the figures must not depend on the machine's core count; `tolerance` allows what
another CPU kind changes.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from helpers import invoke

from wsml_fast.schemes import SCHEMES

RECORDED = Path(__file__).parent / "data" / "behaviour_kept"
RECORD = os.environ.get("WSML_RECORD_BEHAVIOUR") == "1"
TIMINGS = {"seconds", "train_seconds"}  # the only columns that may differ between two runs
SCHEME_FILES = ("corrected_labels.csv", "pseudo_labels.csv")
BASE = ["--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32", "--bs", "16", "--epochs", "3"]
BASE += ["--seed", "3", "--workers", "0"]

CASES = {name: ["--scheme", name] for name in SCHEMES if name != "iu"}  # the demo has no observed negatives
CASES["em-apl"] += ["--apl-warmup", "1"]  # pseudo-labels within the 3 epochs
CASES["llr-boost-lu-5"] = ["--scheme", "llr", "--boost-lu", "5"]
CASES["role-linear-init"] = ["--scheme", "role", "--mode", "linear-init", "--linear-epochs", "1"]
CASES["llcp-2-workers"] = ["--scheme", "llcp", "--delta-rel", "1", "--workers", "2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def tolerance(column: str) -> dict[str, float]:
    """How far a figure may move on another CPU kind: the same seeded run sums in another order where the vector
    width differs (losses move by about 1e-6), and a score that ties another may then fall on its other side
    (an mAP, in percent, moves by hundredths). A change of behaviour moves them by orders of magnitude more."""
    return {"abs": 0.1, "rel": 0} if column.endswith("map") else {"rel": 1e-4, "abs": 1e-5}


def assert_same_rows(now: list[dict[str, str]], then: list[dict[str, str]], what: str) -> None:
    assert len(now) == len(then), f"{what}: {len(now)} rows, recorded {len(then)}"
    for index, (row, old) in enumerate(zip(now, then, strict=True)):
        assert row.keys() == old.keys(), f"{what} row {index + 1}: columns {list(row)}, recorded {list(old)}"
        for column in row.keys() - TIMINGS:
            value, recorded = row[column], old[column]
            if value == recorded:
                continue
            close = float(value) == pytest.approx(float(recorded), **tolerance(column))
            assert close, f"{what} row {index + 1}, {column}: {value}, recorded {recorded}"


@pytest.mark.parametrize("case", CASES)
def test_a_short_run_trains_as_recorded(case: str, demo_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / case
    result = invoke("train", "--data", demo_folder, *BASE, *CASES[case], "--out", run)
    assert result.exit_code == 0, result.output
    assert f"scheme {CASES[case][1]}" in result.output and (run / "results.json").is_file()
    files = ["metrics.csv", *(name for name in SCHEME_FILES if (run / name).is_file())]
    if RECORD:
        (RECORDED / case).mkdir(parents=True, exist_ok=True)
        for name in files:
            (RECORDED / case / name).write_bytes((run / name).read_bytes())
        return
    recorded = sorted(path.name for path in (RECORDED / case).iterdir())
    assert sorted(files) == recorded, f"{case}: the run wrote {files}, recorded {recorded}"
    for name in files:
        assert_same_rows(read_rows(run / name), read_rows(RECORDED / case / name), f"{case}/{name}")
