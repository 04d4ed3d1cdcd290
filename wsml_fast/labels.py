"""Partial-label tables: read and write `observed.csv` / `truth.csv` (wide or compact form).

Inside wsml a label matrix is float32 with 1 = positive, 0 = negative and -1 = unobserved, so unobserved
entries stay distinguishable from observed negatives all the way to the loss.
"""

from __future__ import annotations

import contextlib
import csv
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.errors import WsmlError

UNOBSERVED = -1.0
SPLITS = ("train", "valid", "test")
RESERVED = ("image", "split")
COMPACT = ("positives", "negatives")


@dataclass
class LabelFile:
    """One parsed label CSV: a row per image, a column per class."""

    path: Path
    images: list[str]
    splits: np.ndarray | None  # str per row, or None when the file has no split column
    classes: list[str]
    matrix: np.ndarray  # float32 (rows, classes): 1, 0 or -1 (unobserved)


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(file line where it starts, fields) of each record pandas reads, the header first.

    Blank and whitespace-only lines are skipped as pandas skips them; a quoted cell may span lines.
    """
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
        last = [""]

        def lines() -> Iterator[str]:
            for line in file:
                last[0] = line
                yield line

        reader = csv.reader(lines())
        start = 1
        for fields in reader:
            if reader.line_num != start or last[0].strip():
                yield start, fields
            start = reader.line_num + 1


def _scan(path: Path) -> Iterator[tuple[int, list[str]]]:
    """`_records` with cells of any length (the csv module's default limit is 128 KiB)."""
    limit = csv.field_size_limit(2**31 - 1)
    try:
        yield from _records(path)
    finally:
        csv.field_size_limit(limit)


def _file_lines(path: Path, rows: Sequence[int]) -> list[int]:
    """File lines of 0-based data rows. It reads the file again, so it is for error messages only."""
    wanted = {int(r) + 1 for r in rows}  # record 0 is the header
    found: dict[int, int] = {}
    with contextlib.closing(_scan(path)) as records:
        for index, (line, _) in enumerate(records):
            if index in wanted:
                found[index] = line
                if len(found) == len(wanted):
                    break
    return [found.get(int(r) + 1, int(r) + 2) for r in rows]


def _at(path: Path, frame: pd.DataFrame, row: int) -> str:
    """`line N (image NAME)` for an error message about data row `row`."""
    return f"line {_file_lines(path, [row])[0]} (image {frame['image'].iloc[row]})"


def _too_many_fields(path: Path, exc: pd.errors.ParserError) -> str:
    """The parser's complaint about a row longer than the header, worded with the row's file line."""
    found = re.search(r"Expected (\d+) fields", str(exc))
    if found:
        width = int(found.group(1))
        with contextlib.closing(_scan(path)) as records:
            for line, fields in records:
                if len(fields) > width:
                    return (
                        f"{path}: line {line} has {len(fields)} cells but the header has {width} "
                        "(a trailing comma, or an unquoted comma inside a cell?)"
                    )
    return f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})"


def _not_utf8(path: Path) -> str:
    """Where the file stops being UTF-8 text (pandas' own offset counts within a chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"{path}: line {line} is not UTF-8 text; save the file as UTF-8"
    return f"{path}: not UTF-8 text; save the file as UTF-8"


def _header(path: Path, raw: Sequence[str]) -> list[str]:
    """The header's column names, exactly: no empty, repeated or wrongly cased reserved names."""
    names = [str(name).strip() for name in raw]
    for i, name in enumerate(names):
        if not name:
            where = "the last column: a trailing comma?" if i == len(names) - 1 else f"column {i + 1}"
            raise WsmlError(f"{path}: empty column name in the header ({where}); every column needs a name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            kind = "column" if name in RESERVED + COMPACT else "class"
            raise WsmlError(f"{path}: {kind} '{name}' appears twice in the header; each column must appear once")
        seen.add(name)
        if name.lower() in RESERVED + COMPACT and name != name.lower():
            raise WsmlError(f"{path}: column '{name}' in the header: write it '{name.lower()}' (lower case)")
    if "image" not in names:
        hint = ""
        if len(names) == 1 and (sep := next((c for c in ";\t" if c in names[0]), None)):
            hint = f"; the header is separated by {sep!r}, wsml reads comma-separated files"
        raise WsmlError(f"{path}: no 'image' column (the header must start with image[,split],class...){hint}")
    return names


def _read_frame(path: Path) -> pd.DataFrame:
    """The data rows as strings, under the header's own names (pandas would rename or invent some)."""
    if not path.is_file():
        raise WsmlError(f"{path}: file not found")
    try:
        # header=None: the header is read as row 0, so pandas neither renames repeated names nor takes
        # the first column for an index when every row is longer than the header (it raises instead)
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=None)
    except pd.errors.ParserError as exc:
        raise WsmlError(_too_many_fields(path, exc)) from None
    except UnicodeDecodeError:
        raise WsmlError(_not_utf8(path)) from None
    except pd.errors.EmptyDataError:
        raise WsmlError(f"{path}: empty file (it needs a header line image[,split],class...)") from None
    names = _header(path, raw.iloc[0].tolist())
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = names
    images = frame["image"].str.strip()
    empty = np.flatnonzero((images == "").to_numpy())
    if empty.size:
        raise WsmlError(f"{path}: line {_file_lines(path, [empty[0]])[0]} has an empty 'image' cell")
    dup = images.duplicated(keep=False).to_numpy()
    if dup.any():
        first = images[dup].iloc[0]
        lines = _file_lines(path, np.flatnonzero((images == first).to_numpy())[:2])
        raise WsmlError(
            f"{path}: image '{first}' appears on lines {lines[0]} and {lines[1]}; each image must appear once"
        )
    frame["image"] = images
    return frame


def _read_splits(path: Path, frame: pd.DataFrame) -> np.ndarray | None:
    if "split" not in frame.columns:
        return None
    splits = frame["split"].str.strip().str.lower().to_numpy(dtype=object)
    bad = np.flatnonzero(~np.isin(splits, SPLITS))
    if bad.size:
        row = bad[0]
        raise WsmlError(f"{path}: {_at(path, frame, row)} has split '{splits[row]}'; use one of {', '.join(SPLITS)}")
    return splits


def _parse_cells(path: Path, frame: pd.DataFrame, classes: list[str], allow_empty: bool) -> np.ndarray:
    cells = frame[classes].to_numpy(dtype=str)
    cells = np.char.strip(cells)
    matrix = np.full(cells.shape, np.nan, dtype=np.float32)
    matrix[np.isin(cells, ("1", "1.0"))] = 1.0
    matrix[np.isin(cells, ("0", "0.0"))] = 0.0
    if allow_empty:
        matrix[cells == ""] = UNOBSERVED
    bad = np.argwhere(np.isnan(matrix))
    if bad.size:
        row, col = bad[0]
        allowed = "1, 0 or empty" if allow_empty else "1 or 0 (this file must be complete)"
        raise WsmlError(
            f"{path}: {_at(path, frame, row)}, column '{classes[col]}': '{cells[row, col]}' is not {allowed}"
        )
    return matrix


def read_classes_file(path: Path) -> list[str]:
    """The class list of the compact form: one name per line, blank lines ignored."""
    if not path.is_file():
        raise WsmlError(f"{path}: file not found (the compact label form needs its class list, one per line)")
    classes = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not classes:
        raise WsmlError(f"{path}: no class names in it")
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise WsmlError(f"{path}: class '{name}' is listed twice")
        seen.add(name)
    return classes


def _parse_compact(path: Path, frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Fill the matrix from `|`-separated class lists without a Python loop over rows."""
    matrix = np.full((len(frame), len(classes)), UNOBSERVED, dtype=np.float32)
    index = pd.Index(classes)
    for column, value in ((c, v) for c, v in zip(COMPACT, (1.0, 0.0), strict=True) if c in frame.columns):
        names = frame[column].str.split("|").explode().str.strip()
        names = names[names != ""]
        cols = index.get_indexer(names.to_numpy())
        unknown = np.flatnonzero(cols < 0)
        if unknown.size:
            row = int(names.index[unknown[0]])
            raise WsmlError(
                f"{path}: {_at(path, frame, row)}, column '{column}': class "
                f"'{names.iloc[unknown[0]]}' is not in classes.txt"
            )
        rows = names.index.to_numpy(dtype=np.int64)
        clash = (matrix[rows, cols] != UNOBSERVED) & (matrix[rows, cols] != value)
        if clash.any():
            row = int(rows[np.flatnonzero(clash)[0]])
            raise WsmlError(f"{path}: {_at(path, frame, row)} lists a class as both positive and negative")
        matrix[rows, cols] = value
    return matrix


def read_label_csv(path: Path, classes_file: Path | None = None, complete: bool = False) -> LabelFile:
    """Parse a label CSV in the wide form (a column per class) or the compact form (`positives` column).

    `complete=True` is for truth files: every cell must be 0 or 1.
    """
    path = Path(path)
    frame = _read_frame(path)
    splits = _read_splits(path, frame)
    if any(c in frame.columns for c in COMPACT):
        if complete:
            raise WsmlError(f"{path}: a truth file must be in the wide form (a 0/1 column per class)")
        extra = [c for c in frame.columns if c not in RESERVED + COMPACT]
        if extra:
            raise WsmlError(
                f"{path}: column '{extra[0]}' next to positives/negatives; the compact form has only the columns "
                "image, split, positives and negatives (classes go in classes.txt, not in columns)"
            )
        classes = read_classes_file(classes_file or path.with_name("classes.txt"))
        matrix = _parse_compact(path, frame, classes)
    else:
        classes = [c for c in frame.columns if c not in RESERVED]
        if not classes:
            raise WsmlError(f"{path}: no class columns after 'image' and 'split'")
        matrix = _parse_cells(path, frame, classes, allow_empty=not complete)
    return LabelFile(path, frame["image"].tolist(), splits, classes, matrix)


def outside_root(images: Sequence[str]) -> tuple[list[str], list[str]]:
    """Image paths that are absolute, and those that climb out of the image root through `..`.

    Vectorized: only the paths containing `..` are normalized one by one.
    """
    paths = pd.Series(list(images), dtype=object)
    absolute = paths.str.startswith("/").to_numpy(dtype=bool)
    maybe_up = ~absolute & paths.str.contains("..", regex=False).to_numpy(dtype=bool)
    up = [p for p in paths[maybe_up] if (n := posixpath.normpath(p)) == ".." or n.startswith("../")]
    return paths[absolute].tolist(), up


def outside_root_note(images: Sequence[str], root: Path) -> str | None:
    """A line counting image paths that lie outside `root` (they are read as written), or None."""
    absolute, up = outside_root(images)
    parts = [
        f"{len(found)} {what} (first: {found[0]})"
        for found, what in ((absolute, "are absolute"), (up, f"leave {root} through '..'"))
        if found
    ]
    if not parts:
        return None
    return f"image paths outside the image folder: {' and '.join(parts)}; they are read as written"


def align_truth(observed: LabelFile, truth: LabelFile) -> np.ndarray:
    """Reorder the truth matrix to the rows of `observed`; classes and images must match exactly."""
    if truth.classes != observed.classes:
        missing = sorted(set(observed.classes) - set(truth.classes))
        extra = sorted(set(truth.classes) - set(observed.classes))
        detail = f"missing {missing[:3]}" if missing else f"extra {extra[:3]}" if extra else "in another order"
        raise WsmlError(
            f"{truth.path}: class columns differ from {observed.path.name} ({detail}); they must be the same"
        )
    position = pd.Index(truth.images).get_indexer(observed.images)
    if (position < 0).any() or len(truth.images) != len(observed.images):
        absent = [im for im, p in zip(observed.images, position, strict=True) if p < 0][:3]
        detail = f"lacks {absent}" if absent else "has rows that are not in observed.csv"
        raise WsmlError(f"{truth.path}: {detail}; it must list the same images as {observed.path.name}")
    return truth.matrix[position]


def _wide_cells(matrix: np.ndarray) -> np.ndarray:
    cells = np.where(matrix > 0.5, "1", "0").astype(object)
    cells[matrix < 0] = ""
    return cells


def _compact_lists(matrix: np.ndarray, classes: Sequence[str], value: float) -> list[str]:
    names = np.asarray(classes, dtype=object)
    rows, cols = np.nonzero(matrix == value)
    joined = pd.Series(names[cols]).groupby(rows).agg("|".join)
    out = pd.Series("", index=range(matrix.shape[0]), dtype=object)
    out.loc[joined.index] = joined.to_numpy()
    return out.tolist()


def write_label_csv(
    path: Path,
    images: Sequence[str],
    splits: Sequence[str],
    classes: Sequence[str],
    matrix: np.ndarray,
    compact: bool = False,
) -> None:
    """Write a label table; -1 cells become empty (wide) or are left out of both lists (compact).

    The compact form also writes `classes.txt` next to the CSV.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"image": list(images), "split": list(splits)})
    if compact:
        frame["positives"] = _compact_lists(matrix, classes, 1.0)
        frame["negatives"] = _compact_lists(matrix, classes, 0.0)
        path.with_name("classes.txt").write_text("".join(f"{c}\n" for c in classes))
    else:
        frame = pd.concat([frame, pd.DataFrame(_wide_cells(matrix), columns=list(classes))], axis=1)
    frame.to_csv(path, index=False)
