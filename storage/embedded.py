"""The embedded PostgreSQL used when no `DATABASE_URL` is configured.

The `pgserver` package bundles PostgreSQL 16 binaries; the cluster lives in
`DATA_DIR/postgres` and listens on a Unix socket only. It is reached through
the very same asyncpg code path as an external database. When run as root,
pgserver runs PostgreSQL as a `pgserver` system user it creates, because
`initdb` refuses to run as root.

Both functions block (initdb, pg_ctl): call them in a worker thread.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["start_embedded", "stop_embedded"]

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or attach to) the cluster under `data_dir`; return (handle, dsn)."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (root, CI).
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    dsn = server.get_uri()
    log.info("embedded PostgreSQL running in %s", pgdata)
    return server, dsn


def stop_embedded(server: Any) -> None:
    """Stop the cluster if this process holds the last handle on it."""
    server.cleanup()
