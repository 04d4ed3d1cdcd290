"""Atomic file writes: a kill, a full disk or a failing writer at any instant leaves the previous version intact.

The new content goes to a temporary file in the same folder (same file system, so the final rename is atomic),
is flushed and fsynced, then replaces the target with `os.replace`; the folder is fsynced so the rename itself
survives a power cut. A failed write removes its temporary file and names the target in a one-line error.
The file gets the permissions a plain `open(path, "w")` would give it (mkstemp's are 0600): an existing file's
own, else 0666 less the umask, so a colleague can read a shared run where the umask lets them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from wsml_fast.core.errors import WsmlError


def _explain(path: Path, exc: OSError) -> WsmlError:
    if exc.errno == errno.ENOSPC:
        return WsmlError(f"{path}: no space left on the device; free some space (the previous version is intact)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WsmlError(f"{path}: not writable ({exc.strerror}); choose a folder you can write to")
    return WsmlError(f"{path}: cannot be written ({exc.strerror or exc.__class__.__name__})")


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (torch's zip writer reports a failed write as a RuntimeError raised from it);
    None for an error that is not about the file (a WsmlError from the writer, or one raised `from None`)."""
    while exc is not None and not isinstance(exc, OSError):
        if isinstance(exc, WsmlError) or exc.__suppress_context__ and exc.__cause__ is None:
            return None
        exc = exc.__cause__ or exc.__context__
    return exc


def atomic_write(path: Path, write: Callable[[BinaryIO], None], check: Callable[[Path], None] | None = None) -> None:
    """Call `write(handle)` on a temporary file, then atomically put it in place of `path`.

    `check(temporary)` reads the written file before it replaces `path`; an error it raises leaves `path` as it was.
    """
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _explain(path, exc) from None
    try:
        with contextlib.suppress(OSError):  # (some file systems have no permissions to set)
            os.fchmod(descriptor, _mode_for(path))
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(Path(temporary))
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        cause = _os_error(exc)
        if cause is not None:
            raise _explain(path, cause) from None
        raise
    _sync_folder(path.parent)


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read where Linux shows it: setting it to read it back changes it for an instant for
    every thread (the fallback where /proc is not there)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """fsync the folder so the rename is durable (not possible on every platform: then skipped)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_torch(path: Path, obj: object) -> None:
    """`torch.save` through an atomic write."""
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))
