"""A run's trackers (`--log`), driven by one callback from the run's own record of each epoch.

The callback reads each epoch's finished row of metrics.csv from the run state once the row is written and the
epoch's checkpoint too (so an epoch is logged once it is complete, and never twice: a resumed run starts after the
last complete epoch). Each tracker's last logged epoch is kept in the run folder's tracking.json, with what the
tracker keeps itself (MLflow's run id): a resumed run continues the same logs, first catching up the epochs a
tracker missed. A tracker that fails says so in one warning line and is left alone from then on: training goes
on, and the run folder stays the record. Process 0 of a data-parallel run alone logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wsml_fast.core.errors import one_line
from wsml_fast.learning.contract import WsmlCallback
from wsml_fast.training.runfolder import CONFIG, REPORT, THRESHOLDS, TRACKING, WEIGHTS, RunFolder
from wsml_fast.training.setup import Setup
from wsml_fast.training.trackers import Tracker, tracker_class

ARTIFACTS = (WEIGHTS, THRESHOLDS, REPORT, CONFIG)  # the run folder's files a tracker keeps, where they exist


class Guarded:
    """Calls to one tracker (or to a study's run: anything with the trackers' `calls()`), each in its `calls()`
    context: the first that raises is said in one warning line, and none is made after it."""

    def __init__(self, name: str, tracker: Any, say: Callable[[str], None]) -> None:
        self.name, self.tracker, self.say = name, tracker, say
        self.failed = False

    def call(self, method: str, *args: Any) -> Any:
        """The method's result; None once the tracker has failed (now or before)."""
        if self.failed:
            return None
        try:
            with self.tracker.calls():
                return getattr(self.tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - a server down, a full disk, a library's own error: all alike
            self.failed = True
            self.say(
                f"warning: --log {self.name} failed and is off from here ({exc.__class__.__name__}: "
                f"{one_line(exc)[:200]}); training goes on and the run folder keeps every value"
            )
            return None


def kept_records(run: RunFolder) -> dict[str, dict]:
    """tracking.json: per tracker, its last logged epoch and what it keeps (empty when there is none, or when the
    file is not what wsml wrote: the trackers then start afresh)."""
    try:
        kept = json.loads(run.file(TRACKING).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(kept, dict):
        return {}
    return {name: record for name, record in kept.items() if isinstance(record, dict)}


class RunTracking(WsmlCallback):
    """The run's trackers: opened when the run (or its resumption) starts, given each complete epoch's row,
    then its results and files, and closed with how the run ended."""

    order = 73  # after the run log (70) wrote the row and the checkpoint (72) the epoch; before early stopping

    def __init__(self, folder: RunFolder, say: Callable[[str], None]) -> None:
        self.folder, self.say = folder, say
        self.trackers: dict[str, Guarded] = {}
        self.records: dict[str, dict] = {}

    @classmethod
    def open(cls, setup: Setup, history: list[dict], tags: dict[str, str] | None = None) -> RunTracking:
        """Start the trackers of `setup.config.log` (none but in the process that writes the run), each where it
        left off (`history`: the rows of the epochs completed before, when resuming), and catch them up."""
        tracking = cls(setup.run, setup.say)
        names = list(dict.fromkeys(setup.config.log)) if setup.process.writes else []
        kept = kept_records(setup.run) if names else {}
        for name in names:
            tracker: Tracker = tracker_class(name)()
            guarded = Guarded(name, tracker, setup.say)
            record = kept.get(name)
            if record is not None:
                record = {**record, "epoch": min(record.get("epoch", 0), len(history))}
            own = guarded.call("start", setup.run, setup.config, record, dict(tags or {}))
            if own is None:
                continue
            tracking.trackers[name] = guarded
            tracking.records[name] = {**own, "epoch": record["epoch"] if record else 0}
            for row in history[tracking.records[name]["epoch"] :]:
                tracking._log(name, row)
        tracking._keep()
        return tracking

    def _log(self, name: str, row: dict) -> None:
        self.trackers[name].call("log_epoch", row)
        if not self.trackers[name].failed:
            self.records[name]["epoch"] = row["epoch"]

    def _keep(self) -> None:
        if self.records:
            self.folder.write_text(TRACKING, json.dumps(self.records, indent=2) + "\n")

    def after_epoch(self) -> None:
        if not self.trackers:
            return
        for name in self.trackers:
            self._log(name, self.run_state.history[-1])
        self._keep()

    def finish(self, results: dict[str, Any]) -> None:
        """The run's results and its files (those of `ARTIFACTS` that exist)."""
        artifacts = [self.folder.file(name) for name in ARTIFACTS if self.folder.file(name).is_file()]
        for guarded in self.trackers.values():
            guarded.call("finish", results, artifacts)

    def close(self, state: str) -> None:
        """`state`: finished, interrupted or failed."""
        for guarded in self.trackers.values():
            guarded.call("close", state)
