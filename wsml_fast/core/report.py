"""wsml's one way to speak: a line to the console and to the run's log."""

from __future__ import annotations

import sys
from pathlib import Path


class Reporter:
    """wsml's one way to speak: prints to the console (stdout, or stderr with `err`) and appends the same lines
    to the run's log file, if any. A process that does not write (any but process 0 of a data-parallel run) is
    given one that does not speak."""

    def __init__(self, log_path: Path | None = None, speaks: bool = True) -> None:
        self.log_path, self.speaks = log_path, speaks

    def __call__(self, message: str, console: bool = True, err: bool = False) -> None:
        if not self.speaks:
            return
        if console:
            print(message, file=sys.stderr if err else sys.stdout, flush=True)
        if self.log_path is not None:
            with self.log_path.open("a") as handle:
                handle.write(message + "\n")
