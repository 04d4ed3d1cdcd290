"""Partial-label tables: read and write `observed.csv` / `truth.csv` (wide or compact form).

Inside wsml a label is 1 = positive, 0 = negative or -1 = unobserved, so unobserved entries stay
distinguishable from observed negatives all the way to the loss. A file is read into a `LabelStore`:
observed labels list their 1 and 0 entries over a fill of -1, a truth lists its positives over a fill of 0.
Files are read in chunks of rows and no step of the compact form (the large-scale one: OpenImages has 1.7
million images and 9,600 classes) makes a dense matrix or a Python step per row, so memory follows the
labels a file lists rather than images x classes. A problem found in a chunk is reported once the whole
file is read, the earliest check first and then the earliest row, so a file with several problems names
the one a whole-file read named.
"""

from __future__ import annotations

import contextlib
import csv
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labelstore import LabelStore

UNOBSERVED = -1.0
SPLITS = ("train", "valid", "test")
RESERVED = ("image", "split")
COMPACT = ("positives", "negatives")
COMPACT_VALUES = {"positives": 1, "negatives": 0}
CHUNK_CELLS = 1_000_000  # cells read at once: bounds the strings held, however many rows a file has
EMPTY = -2  # lookup code of an empty class name (`a||b`, an empty cell): listed nothing
# the checks in the order their problems are reported (the order of a whole-file read): a compact file's
# bad cells are BAD_CELL in its positives column and the next one in its negatives column
EMPTY_IMAGE, REPEATED_IMAGE, BAD_SPLIT, BAD_CELL = range(4)
CLASH = BAD_CELL + len(COMPACT)  # a class listed both positive and negative


@dataclass
class LabelFile:
    """One parsed label CSV: a row per image, a column per class, the labels as a store."""

    path: Path
    images: list[str]
    splits: np.ndarray | None  # str per row, or None when the file has no split column
    classes: list[str]
    store: LabelStore  # observed: fill -1, entries 1 and 0; truth (complete=True): fill 0, entries 1


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


def _width(path: Path) -> int:
    """How many cells the header has, to size the chunks (pandas reads and checks the header itself)."""
    with contextlib.closing(_scan(path)) as records:
        return max(1, len(next(records, (1, []))[1]))


def _frames(path: Path) -> Iterator[pd.DataFrame]:
    """The file's records as frames of strings of about CHUNK_CELLS cells each; the header is the first record.

    header=None: the header is read as a record, so pandas neither renames repeated names nor takes the
    first column for an index when every row is longer than the header (it raises instead).
    """
    if not path.is_file():
        raise WsmlError(f"{path}: file not found")
    rows = max(2, CHUNK_CELLS // _width(path))
    try:
        with pd.read_csv(path, dtype=str, keep_default_na=False, header=None, chunksize=rows) as reader:
            yield from reader
    except pd.errors.ParserError as exc:
        raise WsmlError(_too_many_fields(path, exc)) from None
    except UnicodeDecodeError:
        raise WsmlError(_not_utf8(path)) from None
    except pd.errors.EmptyDataError:
        raise WsmlError(f"{path}: empty file (it needs a header line image[,split],class...)") from None


def _lookup(names: Sequence[str], codes: dict[str, int], tidy: Callable[[str], str]) -> np.ndarray:
    """The code of each name, -1 if unknown. Only names not found as written are tidied and looked up
    again, so a tidy file costs one dictionary lookup per name and no string copies."""
    found = np.fromiter(map(codes.get, names, repeat(-1)), np.int64, len(names))
    again = np.flatnonzero(found == -1)
    if again.size:
        found[again] = np.fromiter((codes.get(tidy(names[i]), -1) for i in again), np.int64, again.size)
    return found


def _tidy_split(split: str) -> str:
    return split.strip().lower()


Say = Callable[[str], str]  # a problem's message, given where its row is ("line 5 (image x.png)")


@dataclass(order=True, frozen=True)
class _Problem:
    """A problem met while reading; the earliest check is reported, then the earliest row."""

    check: int
    row: int
    say: Say = field(compare=False)


Note = Callable[[int, int, Say], None]  # (check, data row, say): records a problem


@dataclass
class _Wide:
    """A column per class; a cell is 1, 0 or (observed files only) empty."""

    path: Path
    classes: list[str]
    complete: bool

    @property
    def fill(self) -> int:
        return 0 if self.complete else int(UNOBSERVED)

    def read(self, frame: pd.DataFrame, start: int, note: Note) -> LabelStore | None:
        """The rows of `frame` (data rows `start`...), or None after noting a bad cell."""
        cells = np.char.strip(frame[self.classes].to_numpy(dtype=str))
        matrix = np.full(cells.shape, np.nan, dtype=np.float32)
        matrix[np.isin(cells, ("1", "1.0"))] = 1.0
        matrix[np.isin(cells, ("0", "0.0"))] = 0.0
        if not self.complete:
            matrix[cells == ""] = UNOBSERVED
        bad = np.argwhere(np.isnan(matrix))
        if not bad.size:
            return LabelStore.from_dense(matrix, self.fill)
        row, col = bad[0]
        allowed = "1 or 0 (this file must be complete)" if self.complete else "1, 0 or empty"
        column, text = self.classes[col], cells[row, col]
        note(BAD_CELL, start + row, lambda at: f"{self.path}: {at}, column '{column}': '{text}' is not {allowed}")
        return None


def _listed(cells: list[str], codes: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(row, class code) of every `|`-separated name in `cells`, and the names: one join and one split
    over all the cells rather than a Python step per row."""
    counts = np.fromiter(map(str.count, cells, repeat("|")), np.int64, len(cells)) + 1
    names = "|".join(cells).split("|") if cells else []
    return np.repeat(np.arange(len(cells)), counts), _lookup(names, codes, str.strip), names


@dataclass
class _Compact:
    """Columns `positives` and/or `negatives`, each a `|`-separated list of names from classes.txt."""

    path: Path
    classes: list[str]
    columns: list[str]  # the compact columns present, in COMPACT order
    fill: int = int(UNOBSERVED)

    def __post_init__(self) -> None:
        self.codes = {name: code for code, name in enumerate(self.classes)} | {"": EMPTY}

    def _column(self, frame: pd.DataFrame, column: str, start: int, note: Note) -> LabelStore:
        """The names listed in one column (repeats of a name in a cell count once); notes the first name
        that is not in classes.txt."""
        rows, cols, names = _listed(frame[column].tolist(), self.codes)
        unknown = np.flatnonzero(cols == -1)
        if unknown.size:
            say = f"column '{column}': class '{names[unknown[0]].strip()}' is not in classes.txt"
            note(BAD_CELL + COMPACT.index(column), start + rows[unknown[0]], lambda at: f"{self.path}: {at}, {say}")
        listed = cols >= 0
        values = np.full(listed.sum(), COMPACT_VALUES[column], dtype=np.int8)
        return LabelStore.from_entries(len(frame), len(self.classes), rows[listed], cols[listed], values, self.fill)

    def read(self, frame: pd.DataFrame, start: int, note: Note) -> LabelStore | None:
        """The rows of `frame` (data rows `start`...), or None after noting a class listed both ways."""
        stores = [self._column(frame, column, start, note) for column in self.columns]
        if len(stores) == 1:
            return stores[0]
        positives, negatives = stores
        rows, cols = negatives.rows_and_cols()
        both = np.flatnonzero(positives.lookup(rows, cols) == COMPACT_VALUES["positives"])
        if both.size:
            note(
                CLASH,
                start + rows[both[0]],
                lambda at: f"{self.path}: {at} lists a class as both positive and negative",
            )
            return None
        rows, cols = np.divmod(np.concatenate([positives.keys, negatives.keys]), len(self.classes))
        values = np.concatenate([positives.values, negatives.values])
        return LabelStore.from_entries(len(frame), len(self.classes), rows, cols, values, self.fill)


def _refuse_separators(classes_file: Path, classes: list[str]) -> None:
    """A class of the compact form cannot hold `|`, which separates the names in a cell: `red|green` would be read
    as two classes."""
    clash = next((name for name in classes if "|" in name), None)
    if clash is not None:
        lines = classes_file.read_text(encoding="utf-8-sig").splitlines()
        number = next(n for n, line in enumerate(lines, 1) if line.strip() == clash)
        raise WsmlError(
            f"{classes_file}: line {number}: class '{clash}' holds '|', which separates the classes of a cell in the "
            "compact form; rename the class"
        )


def _form(path: Path, names: list[str], classes_file: Path | None, complete: bool) -> _Wide | _Compact:
    """How the file lists its labels, from the header; the compact form's classes come from classes.txt."""
    if any(c in names for c in COMPACT):
        if complete:
            raise WsmlError(f"{path}: a truth file must be in the wide form (a 0/1 column per class)")
        extra = [c for c in names if c not in RESERVED + COMPACT]
        if extra:
            raise WsmlError(
                f"{path}: column '{extra[0]}' next to positives/negatives; the compact form has only the columns "
                "image, split, positives and negatives (classes go in classes.txt, not in columns)"
            )
        classes_file = classes_file or path.with_name("classes.txt")
        classes = read_classes_file(classes_file)
        _refuse_separators(classes_file, classes)
        return _Compact(path, classes, [c for c in COMPACT if c in names])
    classes = [c for c in names if c not in RESERVED]
    if not classes:
        raise WsmlError(f"{path}: no class columns after 'image' and 'split'")
    return _Wide(path, classes, complete)


class _Reading:
    """A label file read frame by frame: images, split codes, labels, and the problem to report."""

    def __init__(self, path: Path, names: list[str], form: _Wide | _Compact) -> None:
        self.path, self.names, self.form = path, names, form
        self.images: list[str] = []
        self.split_codes: list[np.ndarray] | None = [np.zeros(0, np.int64)] if "split" in names else None
        self.stores = [LabelStore.empty(0, len(form.classes), form.fill)]
        self.problem: _Problem | None = None

    def note(self, check: int, row: int, say: Say) -> None:
        problem = _Problem(check, int(row), say)
        if self.problem is None or problem < self.problem:
            self.problem = problem

    def add(self, frame: pd.DataFrame) -> None:
        frame.columns = self.names
        start = len(self.images)
        images = list(map(str.strip, frame["image"].tolist()))
        if "" in images:
            self.note(EMPTY_IMAGE, start + images.index(""), lambda at: f"{self.path}: {at} has an empty 'image' cell")
        self.images += images
        if self.split_codes is not None:
            self.split_codes.append(self._split_codes(frame["split"].tolist(), start))
        store = self.form.read(frame, start, self.note)
        if self.problem is None:
            self.stores.append(store)

    def _split_codes(self, splits: list[str], start: int) -> np.ndarray:
        codes = _lookup(splits, {s: i for i, s in enumerate(SPLITS)}, _tidy_split)
        bad = np.flatnonzero(codes == -1)
        if bad.size:
            say = f"has split '{_tidy_split(splits[bad[0]])}'; use one of {', '.join(SPLITS)}"
            self.note(BAD_SPLIT, start + bad[0], lambda at: f"{self.path}: {at} {say}")
        return codes

    def _check_repeats(self) -> None:
        index = pd.Index(self.images)
        if index.is_unique:
            return
        first = self.images[int(np.argmax(index.duplicated(keep=False)))]
        rows = np.flatnonzero(index == first)[:2]

        def say(_: str) -> str:
            lines = _file_lines(self.path, rows)
            return (
                f"{self.path}: image '{first}' appears on lines {lines[0]} and {lines[1]}; each image must appear once"
            )

        self.note(REPEATED_IMAGE, rows[0], say)

    def _at(self, row: int) -> str:
        """`line N (image NAME)`, or `line N` for a row without an image name. Reads the file again."""
        line, image = _file_lines(self.path, [row])[0], self.images[row]
        return f"line {line} (image {image})" if image else f"line {line}"

    def finish(self) -> LabelFile:
        self._check_repeats()
        if self.problem is not None:
            raise WsmlError(self.problem.say(self._at(self.problem.row)))
        splits = None
        if self.split_codes is not None:
            splits = np.asarray(SPLITS, dtype=object)[np.concatenate(self.split_codes)]
        return LabelFile(self.path, self.images, splits, self.form.classes, LabelStore.stack(self.stores))


def read_label_csv(path: Path, classes_file: Path | None = None, complete: bool = False) -> LabelFile:
    """Parse a label CSV in the wide form (a column per class) or the compact form (`positives` column).

    `complete=True` is for truth files: every cell must be 0 or 1; the store lists the positives over 0.
    """
    path = Path(path)
    frames = _frames(path)
    first = next(frames)
    names = _header(path, first.iloc[0].tolist())
    reading = _Reading(path, names, _form(path, names, classes_file, complete))
    for frame in chain([first.iloc[1:]], frames):
        reading.add(frame)
    return reading.finish()


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


def align_truth(observed: LabelFile, truth: LabelFile) -> LabelStore:
    """The truth's store with its rows in the order of `observed`; classes and images must match exactly."""
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
    return truth.store.take(position)


def _wide_cells(matrix: np.ndarray) -> np.ndarray:
    cells = np.where(matrix > 0.5, "1", "0").astype(object)
    cells[matrix < 0] = ""
    return cells


def _check_compact_names(path: Path, classes: Sequence[str]) -> None:
    """A class name must read back as written: classes.txt strips lines and `|` separates names."""
    for name in classes:
        if not name or name != name.strip() or any(c in name for c in "|\n\r"):
            raise WsmlError(
                f"{path}: class name {name!r} cannot be written in the compact form (a name there is not empty, "
                "holds no '|' or line break and neither begins nor ends with a space); rename the class"
            )


def _compact_lists(store: LabelStore, names: np.ndarray, value: int) -> np.ndarray:
    """Each row's classes of `value` joined by `|` in class order ("" for none): one join and one split
    over the whole table rather than a Python step per row."""
    rows, cols = store.entries(value)
    lists = np.full(store.n_rows, "", dtype=object)
    if not len(rows):
        return lists
    last = np.append(rows[1:] != rows[:-1], True)  # the last name of its row
    separators = np.full(len(rows), "|", dtype=object)
    separators[last] = "\n"
    parts = np.empty(2 * len(rows), dtype=object)
    parts[0::2], parts[1::2] = names[cols], separators
    lists[rows[last]] = "".join(parts.tolist()).split("\n")[:-1]
    return lists


def _compact_columns(path: Path, classes: Sequence[str], store: LabelStore) -> dict[str, np.ndarray]:
    if store.fill != UNOBSERVED or not np.isin(store.values, (0, 1)).all():
        raise ValueError("the compact form lists observed 1 and 0 entries: it needs a store of those over -1")
    _check_compact_names(path, classes)
    names = np.asarray(classes, dtype=object)
    return {column: _compact_lists(store, names, value) for column, value in COMPACT_VALUES.items()}


def write_label_csv(
    path: Path,
    images: Sequence[str],
    splits: Sequence[str] | None,
    classes: Sequence[str],
    labels: np.ndarray | LabelStore,
    compact: bool = False,
) -> None:
    """Write a label table; unobserved entries become empty cells (wide) or are left out of both lists
    (compact). `labels` is a dense matrix or a store: the compact form is written from a store's entries
    without a dense matrix, and also writes `classes.txt` next to the CSV. `splits` None: no split column.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"image": list(images)} | ({} if splits is None else {"split": list(splits)}))
    if compact:
        store = labels if isinstance(labels, LabelStore) else LabelStore.from_dense(labels)
        frame = frame.assign(**_compact_columns(path, classes, store))
        path.with_name("classes.txt").write_text("".join(f"{c}\n" for c in classes))
    else:
        matrix = labels.to_dense() if isinstance(labels, LabelStore) else labels
        frame = pd.concat([frame, pd.DataFrame(_wide_cells(matrix), columns=list(classes))], axis=1)
    frame.to_csv(path, index=False)
