"""Append-only JSONL audit log of inference requests, readable by its owner only.

Each entry is one JSON line written with a single ``os.write`` on an ``O_APPEND`` descriptor
opened for that entry, so it is in the kernel (and survives the process being killed)
before :meth:`AuditLog.record` returns. It is not fsynced: a power loss may lose the last
entries, a crashing process does not.

The file is created with mode 0600 whatever the umask; an existing regular file with any
other mode is tightened to 0600 (with a warning) when it is opened. FIFOs and devices
(``/dev/stdout``) keep their mode.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedai.errors import ConfigError
from fedai.fileio import make_dir

logger = logging.getLogger(__name__)

AUDIT_FILE_MODE = 0o600
"""Mode of the audit log file: owner read/write only."""

AUDIT_DIR_MODE = 0o700
"""Mode of a directory created for the audit log."""


class AuditLog:
    """Append-only JSONL log of requests (never their data). Thread-safe.

    Args:
        path: file to append to; None keeps no log.

    Raises:
        ConfigError: the file or its directory cannot be created, opened for appending or
            given mode 0600.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is None:
            return
        try:
            make_dir(self.path.parent, mode=AUDIT_DIR_MODE)
            os.close(_open_for_append(self.path))
        except OSError as err:
            raise ConfigError(
                f"audit log {str(self.path)!r} must be writable with mode 0600: {err}"
            ) from err

    def record(self, **entry: Any) -> None:
        """Append one entry with a UTC timestamp; it is in the kernel when this returns.

        Raises:
            OSError: the entry could not be written (the caller decides whether to serve).
        """
        if self.path is None:
            return
        line = json.dumps({"time": datetime.now(UTC).isoformat(), **entry}, sort_keys=True)
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = _open_for_append(self.path)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)


def _open_for_append(path: Path) -> int:
    """Open ``path`` for appending; create it 0600 or tighten a regular file to 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, AUDIT_FILE_MODE)
    try:
        st = os.fstat(fd)
        found = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and found != AUDIT_FILE_MODE:
            os.fchmod(fd, AUDIT_FILE_MODE)
            if found & 0o077:
                logger.warning(
                    "audit log %s was mode %04o; tightened to %04o", path, found, AUDIT_FILE_MODE
                )
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = ["AUDIT_DIR_MODE", "AUDIT_FILE_MODE", "AuditLog"]
