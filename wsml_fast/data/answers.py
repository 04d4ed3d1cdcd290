"""Answers to asked (image, class) entries, as `wsml merge` reads them: each with where it came from, so that a
problem names its row.

The CSV form has the columns `image` (as in observed.csv), `class` and `answer` (1: present, 0: absent), in any
order, other columns ignored. Label Studio's JSON export is read by `wsml_fast.data.label_studio`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from wsml_fast.core.errors import WsmlError

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
