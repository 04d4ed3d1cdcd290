"""What the benchmarks' `--smoke` modes share: seconds of the same code on a tiny model and tiny data, in a
temporary folder, so that the test suite runs every script and a benchmark that no longer runs is noticed.

A smoke prints the same kind of figures as the full benchmark (meaningless at this size) and writes nothing
into the repository.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TINY_BACKBONE = "test_efficientnet"  # timm's test model: about 0.1 M parameters, no pretrained weights needed
TINY_IMG_SIZE = 32
TINY_SPLITS = {"train": 48, "valid": 16, "test": 16}  # images of the tiny demo dataset


def parse_args(parser: argparse.ArgumentParser, **smoke_defaults) -> argparse.Namespace:
    """The command line, with `--smoke` added; under `--smoke`, `smoke_defaults` replace the parser's defaults
    (options given on the command line still win)."""
    parser.add_argument("--smoke", action="store_true", help="seconds on a tiny model and data (the tests run it)")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**smoke_defaults)
        args = parser.parse_args()
    return args


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder that is also wsml's home (`WSML_HOME`: data, caches) while the smoke runs."""
    before = os.environ.get("WSML_HOME")
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        os.environ["WSML_HOME"] = str(Path(folder) / "home")
        try:
            yield Path(folder)
        finally:
            if before is None:
                del os.environ["WSML_HOME"]
            else:
                os.environ["WSML_HOME"] = before


def tiny_demo(folder: Path) -> Path:
    """A demo dataset folder of a few dozen images (the demo's own code, fewer images)."""
    from wsml_fast.data.demo import make_demo_dataset

    return make_demo_dataset(folder / "demo", seed=1, sizes=TINY_SPLITS)
