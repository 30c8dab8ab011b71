"""Crash-safe file writes shared by the durable queues (`outbox`, `webhooks`).

A file is written to a temporary name, fsync'd, renamed over its final name
and the directory fsync'd: a crash leaves either the old content or the new
one, never half of one. Both functions block: callers run them in an executor.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_directory", "write_atomically"]


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, durably; raise OSError (a full disk) leaving nothing behind."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:  # a nearly full disk may take part of a write
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # Never leave a partial file behind: it would hold the space a
        # full disk needs back.
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or an unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
