"""Reading the raw annotation files of public datasets, with errors that name the file, line and layout.

Raw datasets come in many hand-made layouts; every reader funnels its file access through these helpers
so that a wrong root or a damaged line always ends in one actionable line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError

MAX_FIELDS = 8  # whitespace tables wider than this are not annotation files we know


def need(path: Path, expected: str) -> Path:
    """Return `path` if it is a file, else fail naming it and the layout the reader expects."""
    if not path.is_file():
        raise WsmlError(f"{path}: not found; expected {expected}")
    return path


def find_base(root: Path, candidates: Sequence[str], marker: str, expected: str) -> Path:
    """The first of `root/candidate` holding `marker`, so users may point at any level of a dataset tree."""
    for candidate in candidates:
        base = root / candidate
        if (base / marker).exists():
            return base
    raise WsmlError(f"{root}: no {marker} found under it; expected {expected}")


def read_fields(path: Path, names: Sequence[str], integer: Sequence[str] = ()) -> pd.DataFrame:
    """Whitespace-separated columns `names` (extra trailing fields are ignored, blank lines skipped).

    The index of the result is the 1-based line number, so callers can name the line of later problems.
    Columns listed in `integer` are converted and checked.
    """
    try:
        frame = pd.read_csv(
            path,
            sep=r"\s+",
            header=None,
            names=range(MAX_FIELDS),
            dtype=str,
            skip_blank_lines=False,
            keep_default_na=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise WsmlError(f"{path}: not a whitespace-separated table ({str(exc).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise WsmlError(f"{path}: file is empty") from None
    frame.index = frame.index + 1
    frame = frame[(frame != "").any(axis=1)]
    frame = frame.iloc[:, : len(names)]
    frame.columns = list(names)
    short = np.flatnonzero((frame == "").any(axis=1).to_numpy())
    if short.size:
        line = frame.index[short[0]]
        raise WsmlError(f"{path}: line {line} has fewer than {len(names)} fields ({' '.join(names)})")
    for column in integer:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero((values.isna() | (values != values.round())).to_numpy())
        if bad.size:
            line = frame.index[bad[0]]
            raise WsmlError(f"{path}: line {line}: {column} '{frame[column].iloc[bad[0]]}' is not an integer")
        frame[column] = values.astype(np.int64)
    return frame


def first_duplicate(path: Path, values: pd.Series, what: str) -> None:
    """Fail on the first repeated value, naming both lines, since a repeat means a damaged annotation file."""
    dup = values.duplicated(keep=False).to_numpy()
    if dup.any():
        lines = values.index[dup][:2].tolist()
        raise WsmlError(f"{path}: {what} '{values[dup].iloc[0]}' appears on lines {lines[0]} and {lines[1]}")
