"""Where a command that writes one file (`predict`, `suggest`, `export`: `--out FILE`) may write it, checked before
anything is loaded: a file in an existing folder, never one of a run folder's own files nor a dataset's label files
(whether or not they exist yet)."""

from __future__ import annotations

from pathlib import Path

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.sources import OBSERVED, TRUTH
from wsml_fast.training.runfolder import CONFIG, RUN_FILES

LABEL_FILES = (OBSERVED, TRUTH, "classes.txt")  # a dataset's, beside its images/ folder


def check_output_file(out: Path, what: str, example: str) -> None:
    """Refuse `--out` in one line; `what` names the output in the advice (predictions), `example` a file name."""
    if out.is_dir():
        raise WsmlError(f"--out {out}: is a folder; name the file to write (for example {out / example})")
    if not out.parent.is_dir():
        raise WsmlError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
    if out.name in RUN_FILES and (out.parent / CONFIG).is_file():
        raise WsmlError(f"--out {out}: is a file of the run folder {out.parent}; write {what} elsewhere")
    if out.name in LABEL_FILES and (out.parent / "images").is_dir():
        raise WsmlError(f"--out {out}: is a label file of the dataset {out.parent}; write {what} elsewhere")
