"""OpenImages human-verified image labels: real partial labels, taken as they are (no simulation).

Layout:
ROOT/*class-descriptions*.csv                 `LabelName,DisplayName` (header optional, as in V3-era files)
ROOT/{train,validation,test}/*.jpg            images named {ImageID}.jpg
ROOT/{split}/*human*imagelabels*.csv          `ImageID,Source,LabelName,Confidence` (V4+ names), or
ROOT/*{split}*human*imagelabels*.csv          the same next to the split folders (e.g. oidv6-train-...csv),
ROOT/{split}/annotations-human.csv            or the V3 name inside the split folder.
Any subset of the three splits may be present; train -> train, validation -> valid, test -> test.
Confidence 1 is a positive, 0 a negative; labels not listed are unobserved; there is no truth.csv.
Class names are display names (made unique with the LabelName when two classes share one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labelstore import UNOBSERVED, LabelStore
from wsml_fast.prepare.source import Part, RawDataset

SPLITS = {"train": "train", "validation": "valid", "test": "test"}
LAYOUT = "ROOT/class-descriptions.csv and ROOT/{train,validation,test}/*-human-imagelabels.csv with {ImageID}.jpg"
COLUMNS = ["ImageID", "LabelName", "Confidence"]


def _labels_file(root: Path, folder: str) -> Path | None:
    found = sorted(
        set((root / folder).glob("*human*imagelabels*.csv"))
        | set(root.glob(f"*{folder}*human*imagelabels*.csv"))
        | set((root / folder).glob("annotations-human.csv"))
    )
    if len(found) > 1:
        raise WsmlError(f"{root}: several label files for {folder}: {', '.join(map(str, found))}; keep one")
    return found[0] if found else None


def _descriptions(root: Path) -> pd.Series:
    """LabelName -> DisplayName, in file order."""
    found = sorted(root.glob("*class-descriptions*.csv"))
    if not found:
        raise WsmlError(f"{root / 'class-descriptions.csv'}: not found; expected {LAYOUT}")
    path = found[0]
    frame = pd.read_csv(path, header=None, names=["LabelName", "DisplayName"], dtype=str, keep_default_na=False)
    if len(frame) and frame.iloc[0].tolist() == ["LabelName", "DisplayName"]:
        frame = frame.iloc[1:]
    return frame.drop_duplicates("LabelName").set_index("LabelName")["DisplayName"]


def _read_labels(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, usecols=COLUMNS, dtype={"ImageID": str, "LabelName": str})
    except ValueError as exc:
        raise WsmlError(f"{path}: needs columns {', '.join(COLUMNS)} ({str(exc).splitlines()[0]})") from None
    bad = np.flatnonzero(~frame["Confidence"].isin((0, 1)).to_numpy())
    if bad.size:
        row = bad[0]
        raise WsmlError(f"{path}: line {row + 2}: Confidence '{frame['Confidence'].iloc[row]}' is not 1 or 0")
    return frame


def _class_names(mids: pd.Index, descriptions: pd.Series) -> list[str]:
    names = pd.Series(descriptions.reindex(mids).to_numpy(), index=mids).fillna(pd.Series(mids, index=mids))
    shared = names.duplicated(keep=False)
    names[shared] = names[shared] + " (" + names.index[shared] + ")"
    return names.tolist()


def _part(frame: pd.DataFrame, folder: str, classes: pd.Index) -> tuple[Part, int]:
    """Sparse labels of one split (rows sorted by ImageID) and how many conflicting duplicates were merged."""
    rows, image_ids = pd.factorize(frame["ImageID"], sort=True)
    cells = pd.DataFrame({"row": rows, "col": classes.get_indexer(frame["LabelName"]), "value": frame["Confidence"]})
    cells = cells.drop_duplicates()
    conflicts = int(cells.duplicated(["row", "col"]).sum())
    cells = cells.sort_values("value", ascending=False, kind="stable").drop_duplicates(["row", "col"])
    labels = LabelStore.from_entries(
        len(image_ids),
        len(classes),
        cells["row"].to_numpy(),
        cells["col"].to_numpy(),
        cells["value"].to_numpy(),
        UNOBSERVED,
    )
    return Part([f"{folder}/{i}.jpg" for i in image_ids], observed=labels), conflicts


def read(root: Path, image_root: Path | None) -> RawDataset:
    """Parse every split's label file; classes are all LabelNames used, in class-descriptions order."""
    files = {folder: path for folder in SPLITS if (path := _labels_file(root, folder)) is not None}
    if not files:
        raise WsmlError(f"{root}: no *-human-imagelabels.csv found; expected {LAYOUT}")
    descriptions = _descriptions(root)
    frames = {folder: _read_labels(path) for folder, path in files.items()}
    used = pd.Index(pd.concat([f["LabelName"] for f in frames.values()]).unique())
    known = descriptions.index[descriptions.index.isin(used)]
    mids = known.append(used[~used.isin(known)].sort_values())
    parts, notes = {}, []
    for folder, frame in frames.items():
        parts[SPLITS[folder]], conflicts = _part(frame, folder, mids)
        if conflicts:
            notes.append(f"{files[folder]}: {conflicts} labels listed with both confidences; kept them positive")
    links = {folder: (image_root or root) / folder for folder in files}
    return RawDataset(_class_names(mids, descriptions), links, parts, notes)
