"""`wsml merge`: answers become observed entries of a label CSV, written as a new CSV of the same form.

Every answer is checked before anything is written; the first problem in the answers' own order stops the merge
with one line naming its row: an answer that is neither 1 nor 0, an image or a class the CSV does not have, an
answer that contradicts the CSV's observed entry, or one that contradicts an earlier answer. The result keeps the
CSV's form (wide, or compact with `classes.txt` beside it) and its split column (or its lack of one); it is
written to a temporary file, read back and compared with the merged labels, and only then put in place.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.atomic import atomic_write, write_text
from wsml_fast.core.errors import WsmlError
from wsml_fast.data.answers import Answers, read_answer_csv
from wsml_fast.data.label_studio import read_export
from wsml_fast.data.labels import COMPACT, LabelFile, read_classes_file, read_label_csv, write_label_csv
from wsml_fast.data.labelstore import UNOBSERVED, LabelStore

CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class MergeCounts:
    positives: int  # answers that became observed positives
    negatives: int  # ... observed negatives
    equal: int  # answers the CSV already had as observed entries
    repeated: int  # answers given twice (the same way)
    skipped: int  # Label Studio tasks without an annotation

    def line(self, out: Path) -> str:
        return (
            f"merged {self.positives + self.negatives} answers ({self.positives} positive, {self.negatives} "
            f"negative) into {out}; {self.equal} already observed as answered, {self.repeated} repeated, "
            f"{self.skipped} tasks skipped (no annotation)"
        )


def read_answers(path: Path) -> Answers:
    """A Label Studio JSON export (a `.json` file) or an answers CSV (anything else)."""
    if not path.is_file():
        raise WsmlError(f"{path}: file not found (answers: a CSV image,class,answer or Label Studio's JSON export)")
    return read_export(path) if path.suffix.lower() == ".json" else read_answer_csv(path)


def check_target(observed_csv: Path, out: Path, overwrite: bool) -> None:
    """`--out` must be a file in an existing folder; an existing file (the observed CSV itself included) is
    replaced only with `--overwrite`, so the labels one has are never lost unasked."""
    if out.is_dir():
        raise WsmlError(f"--out {out}: is a folder; name a CSV file (for example {out / 'observed.csv'})")
    if not out.parent.is_dir():
        raise WsmlError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
    if out.exists() and not overwrite:
        same = out.resolve() == observed_csv.resolve()
        what = "is the observed CSV itself" if same else "exists"
        raise WsmlError(f"--out {out}: {what}; choose a new file, or pass --overwrite to replace it")


def _where(answers: Answers, at: int) -> str:
    return f"{answers.path}: {answers.where[at]} (image '{answers.images[at]}', class '{answers.classes[at]}')"


def _checked(observed: LabelFile, answers: Answers) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(rows, classes, values) of the answers that are new observed entries, and the counts of answers equal to
    an observed entry and of repeated answers; refused in one line at the first problem."""
    rows = pd.Index(observed.images).get_indexer(answers.images)
    class_index = {name: i for i, name in enumerate(observed.classes)}
    cols = np.array([class_index.get(name, -1) for name in answers.classes], dtype=np.int64)
    known = observed.store.lookup(np.maximum(rows, 0), np.maximum(cols, 0))
    given: dict[tuple[int, int], int] = {}  # (row, class) -> the answer that gave it
    new, equal, repeated = [], 0, 0
    for at, text in enumerate(answers.values):
        if text not in ("1", "0"):
            raise WsmlError(f"{_where(answers, at)}: answer '{text}' is not 1 or 0")
        if rows[at] < 0:
            raise WsmlError(f"{_where(answers, at)}: image not in {observed.path}")
        if cols[at] < 0:
            raise WsmlError(f"{_where(answers, at)}: class not in {observed.path}'s classes")
        value, cell = int(text), (int(rows[at]), int(cols[at]))
        if known[at] != UNOBSERVED and known[at] != value:
            raise WsmlError(f"{_where(answers, at)}: answer {value} contradicts {observed.path}, which has {known[at]}")
        if cell in given and int(answers.values[given[cell]]) != value:
            raise WsmlError(f"{_where(answers, at)}: answer {value} contradicts {answers.where[given[cell]]}")
        if known[at] != UNOBSERVED:
            equal += 1
        elif cell in given:
            repeated += 1
        else:
            given[cell] = at
            new.append(at)
    new = np.asarray(new, dtype=np.int64)
    return rows[new], cols[new], np.array([int(answers.values[i]) for i in new], dtype=np.int8), equal, repeated


def _is_compact(path: Path) -> bool:
    return any(name.strip() in COMPACT for name in pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns)


def merge_answers(observed_csv: Path, answers_file: Path, out: Path, overwrite: bool = False) -> MergeCounts:
    """Merge the answers of `answers_file` into the labels of `observed_csv` and write them to `out` (see the
    module docstring)."""
    check_target(observed_csv, out, overwrite)
    answers = read_answers(answers_file)
    observed = read_label_csv(observed_csv)
    compact = _is_compact(observed_csv)
    classes_out = out.with_name(CLASSES_FILE)
    if compact and classes_out.is_file() and not overwrite and read_classes_file(classes_out) != observed.classes:
        raise WsmlError(
            f"--out {out}: {classes_out} lists other classes than {observed_csv}'s; choose another folder, or pass "
            "--overwrite to replace it"
        )
    rows, cols, values, equal, repeated = _checked(observed, answers)
    old_rows, old_cols = observed.store.rows_and_cols()
    store = LabelStore.from_entries(
        len(observed.images),
        len(observed.classes),
        np.concatenate([old_rows, rows]),
        np.concatenate([old_cols, cols]),
        np.concatenate([observed.store.values, values]),
        UNOBSERVED,
    )
    _write(observed, store, compact, out)
    positives = int((values == 1).sum())
    return MergeCounts(positives, len(values) - positives, equal, repeated, answers.skipped)


def _write(observed: LabelFile, store: LabelStore, compact: bool, out: Path) -> None:
    """Write the merged labels under a temporary folder, check that they read back as merged, then put the files
    in place, each atomically (classes.txt first: the CSV never appears beside a class list it does not match)."""
    with tempfile.TemporaryDirectory(prefix="wsml-merge-") as folder:
        staged = Path(folder) / out.name
        write_label_csv(staged, observed.images, observed.splits, observed.classes, store, compact=compact)
        back = read_label_csv(staged)
        if back.images != observed.images or back.store.digest() != store.digest():
            raise WsmlError(f"--out {out}: the merged labels did not read back as merged; nothing was written")
        if compact:
            write_text(out.with_name(CLASSES_FILE), staged.with_name(CLASSES_FILE).read_text())
        with staged.open("rb") as source:
            atomic_write(out, lambda handle: shutil.copyfileobj(source, handle))
