"""`--spawn-server`: the server under test as a child process.

Started as the README says (`python server.py`), on a free port, with a
temporary DATA_DIR (so the embedded PostgreSQL is fresh), loopback-only ICE,
and no API key, database URL or LLM key inherited from this shell: a load
test measures this machine's server, offline. Its log goes to `server.log`
in the output directory. Stopping it sends SIGTERM (which ends and saves
every live session) and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerProcess", "redact", "spawn_server"]

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
# Never inherited: they would point the server elsewhere or online.
_SCRUBBED = ("DATABASE_URL", "SUPABASE_DB_URL", "API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
             "PUBLIC_URL", "HOST", "PORT", "DATA_DIR")


def redact(env: Mapping[str, str]) -> dict[str, str]:
    """`env` fit for a report: secrets masked."""
    secret = ("KEY", "TOKEN", "SECRET", "PASSWORD", "DATABASE_URL", "DB_URL")
    return {k: "***" if any(word in k.upper() for word in secret) else v for k, v in env.items()}


@dataclass(frozen=True)
class ServerProcess:
    url: str
    pid: int
    data_dir: Path
    env: Mapping[str, str]  # what was set on top of the inherited environment
    process: asyncio.subprocess.Process

    def exit_code(self) -> int | None:
        """None while the server runs."""
        return self.process.returncode


@contextlib.asynccontextmanager
async def spawn_server(
    log_path: Path, *, api_key: str | None, extra_env: Mapping[str, str]
) -> AsyncIterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="loadtest-server-"))
    settings = {"PORT": "0", "DATA_DIR": str(data_dir), "ICE_LOOPBACK_ONLY": "1",
                "PYTHONUNBUFFERED": "1", **({"API_KEY": api_key} if api_key else {}),
                **extra_env}
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with await asyncio.to_thread(open, log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "server.py"), cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=log,
        )
    drain: asyncio.Task[None] | None = None
    try:
        url = await asyncio.wait_for(_serving_url(proc, log_path), START_TIMEOUT_S)
        drain = asyncio.get_running_loop().create_task(_drain(proc), name="server-stdout")
        yield ServerProcess(url, proc.pid, data_dir, redact(settings), proc)
    finally:
        await _stop(proc)
        if drain is not None:
            drain.cancel()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(data_dir, ignore_errors=True))


async def _serving_url(proc: asyncio.subprocess.Process, log_path: Path) -> str:
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():
        if line.startswith("Serving on "):
            return line.split()[-1]
    await proc.wait()
    raise RuntimeError(f"the server exited ({proc.returncode}) before serving; see {log_path}")


async def _drain(proc: asyncio.subprocess.Process) -> None:
    """Keep reading so the server never blocks on a full pipe."""
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
