"""Clean stops: Ctrl-C or SIGTERM asks training to end at the next batch boundary, keeping the last checkpoint.

The handlers are installed by the command line only (signal handling is process-wide); the library sees a
`StopRequest` it can poll. A second Ctrl-C stops at once, the usual way. A SIGTERM shortly after the Ctrl-C is
not a second request: `torchrun` passes a Ctrl-C on to its processes that way (the terminal's SIGINT reaches them,
then torchrun's SIGTERM), and a data-parallel run stops as cleanly as one process.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

from wsml_fast.core.report import Reporter

HANDLED = (signal.SIGINT, signal.SIGTERM)
PASSED_ON_SECONDS = 10.0  # a SIGTERM this soon after a SIGINT is the launcher passing the same Ctrl-C on


class StopRequest:
    """Set by a signal; `StopRequest()` is true once a stop was asked for. `say` (by default a console
    `Reporter`) acknowledges the request."""

    def __init__(self, say: Reporter | None = None) -> None:
        self.signum: int | None = None
        self.asked_at = 0.0  # time.monotonic() of the request
        self.say = say or Reporter()

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002 - the signal module's signature
        if self.signum is not None and self._passed_on(signum):
            return
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.signum, self.asked_at = signum, time.monotonic()
        self.say(
            f"\n{signal.Signals(signum).name}: stopping at the next batch boundary "
            "(Ctrl-C again stops at once; the last complete epoch stays saved)",
            err=True,
        )

    def _passed_on(self, signum: int) -> bool:
        """Whether `signum` is the first request passed on by a launcher (torchrun's SIGTERM after a Ctrl-C)."""
        soon = time.monotonic() - self.asked_at < PASSED_ON_SECONDS
        return self.signum == signal.SIGINT and signum == signal.SIGTERM and soon

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class RunInterrupted(Exception):
    """Training stopped on request; the run folder holds the last complete epoch and can be resumed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
