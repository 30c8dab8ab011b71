"""A durable local outbox for rows the database could not take.

One file per session (`<session_id>.json`): a later save of the same session
replaces the earlier one, since a row is always a full snapshot. Files are
written to a temporary name, fsync'd, renamed and the directory fsync'd, so a
crash leaves either the old snapshot or the new one, never half of one.

What can never be written goes to `quarantine/` beside the rows, kept for a
person to look at, never retried: a row PostgreSQL refused for its content
(`<session_id>.json`, the newest snapshot, with the error), and an outbox file
that cannot be read back (moved there as it was, with a `.error` note).

All methods block: callers run them in an executor.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.session import SessionRow
from storage.files import fsync_directory, write_atomically

__all__ = ["Outbox", "OutboxCorrupt"]

log = logging.getLogger(__name__)


class OutboxCorrupt(Exception):
    """An outbox file that cannot be read back as a row."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.quarantine_dir = directory / "quarantine"
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # Made now, while there is room: quarantining a file later is then
            # a rename, which a full disk still allows.
            self.quarantine_dir.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s yet: %s", self.quarantine_dir, exc)

    def put(self, row: SessionRow) -> None:
        """Write the row's snapshot; raise OSError (a full disk) or TypeError/ValueError."""
        data = json.dumps(row.to_json()).encode()
        write_atomically(self._path(row.session_id), data)

    def get(self, session_id: uuid.UUID) -> SessionRow | None:
        """The queued snapshot, None if there is none; raise `OutboxCorrupt`."""
        path = self._path(session_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return SessionRow.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors.
            raise OutboxCorrupt(path, f"{type(exc).__name__}: {exc}") from exc

    def discard(self, session_id: uuid.UUID) -> None:
        try:
            self._path(session_id).unlink()
        except FileNotFoundError:
            return
        fsync_directory(self.directory)

    def pending(self) -> list[uuid.UUID]:
        """Session ids waiting in the outbox, oldest first."""
        ids = []
        for path in sorted(self._files(), key=_mtime):
            try:
                ids.append(uuid.UUID(path.stem))
            except ValueError:
                log.warning("ignoring stray outbox file %s", path.name)
        return ids

    def quarantine_row(self, row: SessionRow, reason: str) -> Path:
        """Keep a row the database refused, with why; drop its queued snapshot."""
        record: dict[str, Any] = {
            "quarantined_at": datetime.now(timezone.utc).isoformat(),
            "error": reason,
            "row": row.to_json(),
        }
        # `default=repr`: whatever made the row unserialisable is kept as text
        # rather than losing the row.
        data = json.dumps(record, default=repr, indent=1).encode()
        self.quarantine_dir.mkdir(exist_ok=True)
        path = self.quarantine_dir / f"{row.session_id}.json"
        write_atomically(path, data)
        self.discard(row.session_id)
        return path

    def quarantine_file(self, path: Path, reason: str) -> Path:
        """Move an unreadable outbox file aside as it is, with a note saying why."""
        self.quarantine_dir.mkdir(exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.quarantine_dir / f"{path.stem}.{stamp}.corrupt"
        os.replace(path, target)
        fsync_directory(self.directory)
        try:
            note = target.with_name(target.name + ".error")
            write_atomically(note, f"{reason}\n".encode())
        except OSError as exc:  # the file itself is safe; the note needs room
            log.warning("no note written for %s: %s", target.name, exc)
        return target

    def __len__(self) -> int:
        return sum(1 for _ in self._files())

    def _files(self) -> list[Path]:
        return [p for p in self.directory.glob("*.json") if p.is_file()]

    def _path(self, session_id: uuid.UUID) -> Path:
        return self.directory / f"{session_id}.json"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # discarded meanwhile
        return 0.0
