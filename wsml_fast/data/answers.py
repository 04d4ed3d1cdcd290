"""Answers to asked (image, class) entries, as `wsml merge` reads them: each with where it came from, so that a
problem names its row.

The CSV form has the columns `image` (as in observed.csv), `class` and `answer` (1: present, 0: absent), in any
order, other columns ignored. Label Studio's JSON export is read by `wsml_fast.data.label_studio`.

`truth_answers` answers asked entries from a dataset's full truth, as an annotator who is never wrong would: what
measuring the loop (suggest, answer, merge, train again) on a dataset with a truth.csv needs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import LabelFile

COLUMNS = ("image", "class", "answer")


@dataclass
class Answers:
    """One answer a row: image, class, the answer as written (checked by the merge, which names the row), and
    where it is in `path` ("line 4", "task 2 (id 17)"). `skipped`: tasks that held no answer."""

    path: Path
    images: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    skipped: int = 0

    def add(self, image: str, name: str, value: str, where: str) -> None:
        self.images.append(image)
        self.classes.append(name)
        self.values.append(value)
        self.where.append(where)


def read_answer_csv(path: Path) -> Answers:
    """The answers of a CSV with columns image, class, answer (the file line of each row kept for errors)."""
    answers = Answers(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.reader(file)
            header = [name.strip() for name in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise WsmlError(f"{path}: no '{missing[0]}' column; an answers CSV has the columns image,class,answer")
            at = [header.index(c) for c in COLUMNS]
            start = reader.line_num + 1
            for fields in reader:
                cells = [fields[i].strip() if i < len(fields) else "" for i in at]
                if any(cells):
                    answers.add(*cells, f"line {start}")
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise WsmlError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    return answers


def truth_answers(truth: LabelFile, images: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """The answers CSV's columns (image, class, answer) for the asked entries `images[i]`, `classes[i]`, each answer
    the entry of `truth` (truth.csv read with `complete=True`); an image or class it lacks is refused, named."""
    rows = pd.Index(truth.images).get_indexer(list(images))
    index = {name: i for i, name in enumerate(truth.classes)}
    cols = np.array([index.get(name, -1) for name in classes], dtype=np.int64)
    for what, names, found in (("image", images, rows), ("class", classes, cols)):
        missing = np.flatnonzero(found < 0)
        if len(missing):
            raise WsmlError(f"{truth.path}: no {what} '{names[missing[0]]}' (asked entry {missing[0] + 1})")
    answers = truth.store.lookup(rows, cols).astype(np.int8)
    return pd.DataFrame({"image": list(images), "class": list(classes), "answer": answers})
