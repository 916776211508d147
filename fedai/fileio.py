"""Atomic file writes and directories created with an exact mode whatever the umask.

An atomic write leaves either the old file or the new one after a crash, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, replace.

    The parent directory is created if missing and its entry is flushed after the replace
    (POSIX). The temp file is removed if anything fails; the error propagates.

    Args:
        path: The file to write.
        data: Bytes, or text written as UTF-8.
        mode: Permission bits set before any byte is written (e.g. ``0o600`` for secrets);
            ``None`` keeps ``mkstemp``'s owner-only default.

    Raises:
        OSError: The directory or file cannot be written.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def make_dir(path: Path, *, mode: int) -> bool:
    """Create the directory ``path`` (and missing parents) and give it exactly ``mode``.

    Only a directory created here gets ``mode`` (``os.mkdir`` applies the umask, so it is
    set again with ``chmod``); an existing directory keeps its mode, so ``--out .`` never
    changes the working directory. Missing parents follow the umask.

    Args:
        path: The directory.
        mode: Permission bits for a new directory, e.g. ``0o700`` for key material.

    Returns:
        True if the directory was created here, False if it already existed.

    Raises:
        OSError: ``path`` exists and is not a directory, or cannot be created.
    """
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if path.is_dir():
            return False
        raise
    os.chmod(path, mode)
    return True


def _fsync_dir(directory: Path) -> None:
    """Flush the directory entry of a replaced file (POSIX); a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["atomic_write", "make_dir"]
