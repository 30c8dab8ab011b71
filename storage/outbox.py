"""A durable local outbox for rows the database could not take.

One file per session (`<session_id>.json`): a later save of the same session
replaces the earlier one, since a row is always a full snapshot. Files are
written to a temporary name, fsync'd, renamed and the directory fsync'd, so a
crash leaves either the old snapshot or the new one, never half of one.

All methods block: callers run them in an executor.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from engine.session import SessionRow

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, row: SessionRow) -> None:
        path = self._path(row.session_id)
        tmp = path.with_suffix(".tmp")
        data = json.dumps(row.to_json()).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._fsync_directory()

    def get(self, session_id: uuid.UUID) -> SessionRow | None:
        try:
            return self._read(self._path(session_id))
        except FileNotFoundError:
            return None

    def discard(self, session_id: uuid.UUID) -> None:
        try:
            self._path(session_id).unlink()
        except FileNotFoundError:
            return
        self._fsync_directory()

    def pending(self) -> list[uuid.UUID]:
        """Session ids waiting in the outbox, oldest first."""
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        ids = []
        for path in files:
            try:
                ids.append(uuid.UUID(path.stem))
            except ValueError:
                log.warning("ignoring stray outbox file %s", path.name)
        return ids

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))

    def _read(self, path: Path) -> SessionRow:
        return SessionRow.from_json(json.loads(path.read_bytes()))

    def _path(self, session_id: uuid.UUID) -> Path:
        return self.directory / f"{session_id}.json"

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
