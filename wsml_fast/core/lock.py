"""Who holds a folder for writing, decided by something a dead process cannot hold: an advisory `flock` lock.

A `flock` lock belongs to an open file, and the kernel drops it when the last descriptor of that file closes, so
a process that dies in any way (kill -9 included) holds nothing; a process id recorded in a file outlives its
process and is reused (in a container a command is process 1 after every restart). The holder writes its
process id, host and start time into the lock file, for the message that names it.

Where the file system has no locks (some network file systems), a claim says so and goes on unlocked, and
`probe` answers None: the caller falls back on what the folder records.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from wsml_fast.core.errors import WsmlError

CLAIM_RETRY_SECONDS = 0.5  # a `probe` takes the lock for an instant: a claim meeting one tries again
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_HELD: dict[Path, int] = {}  # lock file -> descriptor, of the locks this process holds


class LockHeld(Exception):
    """Another live process holds the lock; `holder` says which, as far as its lock file tells."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) shares its parent's lock; closing its copy of the descriptor leaves the
    parent's lock alone, and the lock then dies with the parent, not with the last of its children."""
    for descriptor in _HELD.values():
        os.close(descriptor)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def claim(path: Path) -> bool:
    """Take the lock at `path` for this process (until `release` or the process's end); True when held, False
    where the file system has no locks. Raises LockHeld when another live process holds it."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise WsmlError(f"{path}: cannot be opened ({exc.strerror}); the folder must be writable") from None
    deadline = time.monotonic() + CLAIM_RETRY_SECONDS
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(descriptor)
            raise LockHeld(holder(path)) from None
        except OSError as exc:
            os.close(descriptor)
            if exc.errno in _NO_LOCKS:
                return False
            raise WsmlError(f"{path}: cannot be locked ({exc.strerror})") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):  # (only the refusals' wording needs it: a full disk may refuse it)
        os.ftruncate(descriptor, 0)  # written in place: a new file would be another lock
        os.pwrite(descriptor, (json.dumps(me) + "\n").encode(), 0)
    _HELD[path.resolve()] = descriptor
    return True


def release(path: Path) -> None:
    """Give up the lock at `path` if this process holds it (the file stays: removing it would race a claim)."""
    descriptor = _HELD.pop(Path(path).resolve(), None)
    if descriptor is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def probe(path: Path) -> bool | None:
    """Whether a live process holds the lock at `path`: True, False, or None where that cannot be told (no locks
    on this file system, an unreadable lock file). Takes a shared lock for an instant; writes nothing."""
    path = Path(path)
    if path.resolve() in _HELD:
        return True
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(descriptor)  # (releases the shared lock)
    return False


def holder(path: Path) -> str:
    """The holder as its lock file names it: `process PID on HOST since TIME`, or `another process`."""
    try:
        me = json.loads(Path(path).read_text())
        return f"process {int(me['pid'])} on {me['host']} since {me['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"  # (it has not written its name yet, or the file was edited)
