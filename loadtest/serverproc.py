"""`--spawn-server`: the server under test as a child process.

Started by the kit's `start_server` (`python server.py`, as the README says),
on a free port, with a temporary DATA_DIR (so the embedded PostgreSQL is
fresh), loopback-only ICE, and no API key, database URL or LLM key
inherited from this shell: a load test measures this machine's server,
offline. Its log goes to `server.log` in the output directory. Stopping it
sends SIGTERM (which ends and saves every live session) and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from testing import ServerProcess, start_server

__all__ = ["ServerProcess", "redact", "spawn_server"]

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


def redact(env: Mapping[str, str]) -> dict[str, str]:
    """`env` fit for a report: secrets masked."""
    secret = ("KEY", "TOKEN", "SECRET", "PASSWORD", "DATABASE_URL", "DB_URL")
    return {k: "***" if any(word in k.upper() for word in secret) else v for k, v in env.items()}


@contextlib.asynccontextmanager
async def spawn_server(
    log_path: Path, *, api_key: str | None, extra_env: Mapping[str, str]
) -> AsyncIterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="loadtest-server-"))
    settings = {"PORT": "0", "DATA_DIR": str(data_dir), "ICE_LOOPBACK_ONLY": "1", "PYTHONUNBUFFERED": "1",
                **({"API_KEY": api_key} if api_key else {}), **extra_env}
    try:
        async with start_server(settings, log_path=log_path, start_timeout_s=START_TIMEOUT_S,
                                stop_timeout_s=STOP_TIMEOUT_S) as server:
            yield server
    finally:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(data_dir, ignore_errors=True))
