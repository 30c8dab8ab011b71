"""The server under test as a real process: `python server.py`, as the README starts it.

`start_server()` runs the `server.py` this kit was installed with (the
checkout's, or the installed copy's next to this package), on the port and
data directory its `env` names, with nothing inherited from this shell that
would point it at another database, an API key or the internet. It waits for
the one line the server prints when it listens, `Serving on http://host:port`,
keeps reading its output (into `log_path`, if given) so it never blocks on a
full pipe, and stops it on the way out: SIGTERM, which ends and saves every
live session, then a kill if it does not exit in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SERVER_SCRIPT", "ServerExited", "ServerProcess", "parse_serving_url", "start_server"]

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "server.py"
# Never inherited: they would point the server elsewhere, or online.
_SCRUBBED = ("DATABASE_URL", "SUPABASE_DB_URL", "API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
            "GEMINI_BASE_URL", "PUBLIC_URL", "HOST", "PORT", "DATA_DIR")
_SERVING = "Serving on "
_KEPT_LINES = 50  # of the output, for the error when the server exits before serving


class ServerExited(RuntimeError):
    """The server exited before it was serving."""


def parse_serving_url(line: str) -> str | None:
    """The base URL in the server's `Serving on http://host:port` line, else None."""
    if not line.startswith(_SERVING):
        return None
    url = line[len(_SERVING):].strip()
    return url if url.startswith(("http://", "https://")) else None


@dataclass
class ServerProcess:
    """A running server: its URL, process and the settings it was given."""

    url: str
    process: asyncio.subprocess.Process
    script: Path
    env: Mapping[str, str]  # what was set on top of the inherited environment
    log_path: Path | None
    started_in_s: float
    _reader: asyncio.Task[None] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def data_dir(self) -> Path | None:
        value = self.env.get("DATA_DIR")
        return Path(value) if value else None

    def exit_code(self) -> int | None:
        """None while the server runs."""
        return self.process.returncode

    async def stop(self, timeout_s: float = 60) -> float:
        """SIGTERM, wait (a kill after `timeout_s`); seconds taken. Idempotent."""
        started = time.monotonic()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
        return time.monotonic() - started


def _server_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment minus `_SCRUBBED`, plus `env`, on a free port by default."""
    full = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    full.update({"PORT": "0", "PYTHONUNBUFFERED": "1"})
    full.update(env)
    return full


@contextlib.asynccontextmanager
async def start_server(
    env: Mapping[str, str], *, log_path: Path | None = None, script: Path = SERVER_SCRIPT,
    start_timeout_s: float = 90, stop_timeout_s: float = 60, wrapper: Sequence[str] = (),
) -> AsyncIterator[ServerProcess]:
    """Start `script` with this environment minus `_SCRUBBED`, plus `env` (by default
    on a free port); yield it once it is serving; stop it on the way out.

    `wrapper` goes before the command, and must exec it (so that the process
    signalled is the server): `("ip", "netns", "exec", "n0")` runs it in a
    network namespace (`testing.topology`).

    Raises `ServerExited` (with the output's tail, or the log's path) when the
    server exits before serving, TimeoutError after `start_timeout_s`."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *wrapper, sys.executable, str(script), cwd=script.parent, env=_server_env(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    serving: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    reader = asyncio.get_running_loop().create_task(
        _read_output(proc, log_path, serving), name="server-output")
    server: ServerProcess | None = None
    try:
        url = await asyncio.wait_for(asyncio.shield(serving), start_timeout_s)
        server = ServerProcess(url, proc, script, dict(env), log_path, time.monotonic() - started,
                               reader)
        yield server
    finally:
        if server is not None:
            await server.stop(stop_timeout_s)
        else:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await reader
            if not serving.cancelled():
                serving.exception()  # retrieved: the timeout, if any, is what is raised


async def _read_output(proc: asyncio.subprocess.Process, log_path: Path | None,
                       serving: asyncio.Future[str]) -> None:
    assert proc.stdout is not None
    recent: deque[str] = deque(maxlen=_KEPT_LINES)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("a")) if log_path is not None else None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if log is not None:
                log.write(line)
                log.flush()
            if not serving.done():
                recent.append(line)
                if (url := parse_serving_url(line)) is not None:
                    serving.set_result(url)
    await proc.wait()
    if not serving.done():
        where = f"; see {log_path}" if log_path is not None else ":\n" + "".join(recent)
        serving.set_exception(ServerExited(f"the server exited ({proc.returncode}) before serving{where}"))
