"""A throwaway PostgreSQL for tests and tools, without pytest.

It is the server's own embedded database (`storage/embedded.py`, the
`pgserver` binaries), started in a directory of the caller's choosing, so a
test's database is the very one a keyless `python server.py` runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.embedded import start_embedded, stop_embedded

__all__ = ["EmbeddedDatabase", "start_database"]


@dataclass
class EmbeddedDatabase:
    """A running embedded cluster: its admin DSN; `stop()` shuts it down."""

    root: Path  # the cluster lives in root/postgres
    dsn: str
    _handle: Any = field(repr=False)

    def stop(self) -> None:
        """Stop the cluster (blocks: call it in a worker thread from async code)."""
        stop_embedded(self._handle)


def start_database(root: Path) -> EmbeddedDatabase:
    """Start (or restart) the cluster under `root`; blocks (initdb, pg_ctl)."""
    handle, dsn = start_embedded(root)
    return EmbeddedDatabase(root, dsn, handle)
