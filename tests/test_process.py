"""The server as a process: the README's start command, SIGTERM, a killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg

from testing import start_server
from tests.conftest import REPO


@asynccontextmanager
async def server_process(env: dict[str, str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`python server.py` with `env`; yields the process and its base URL."""
    async with start_server(env, start_timeout_s=60) as server:
        yield server.process, server.url


async def create(http: aiohttp.ClientSession, url: str, role: str) -> str:
    async with http.post(f"{url}/sessions", json={"job_role": role}) as resp:
        assert resp.status == 201
        return (await resp.json())["session_id"]


async def statuses(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT session_id, status FROM interview_sessions")
        return {str(r["session_id"]): r["status"] for r in rows}
    finally:
        await conn.close()


async def test_embedded_default_start_and_sigterm(tmp_path: Path):
    """The README's command: no keys, no database; SIGTERM saves every live session."""
    env = {"DATA_DIR": str(tmp_path / "data")}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        first = await create(http, url, "Backend engineer")
        second = await create(http, url, "Data engineer")
        async with http.post(f"{url}/sessions/{first}/end") as resp:
            assert (await resp.json())["saved"] == "saved"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    # Read the rows back through a second run of the same embedded database.
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        for sid in (first, second):
            async with http.get(f"{url}/sessions/{sid}") as resp:
                row = await resp.json()
                assert row["status"] == "completed" and row["end_time"] is not None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_killed_server_rows_become_interrupted(tmp_path: Path, database_url: str):
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "CHECKPOINT_S": "0.2"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        sid = await create(http, url, "QA")
        proc.kill()
        await proc.wait()
    assert (await statuses(database_url))[sid] == "in_progress"
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        fresh = await create(http, url, "SRE")
        for _ in range(100):  # the start-up sweep runs in the background
            found = await statuses(database_url)
            if found[sid] != "in_progress":
                break
            await asyncio.sleep(0.1)
        assert found[sid] == "interrupted"
        # The new process's own live session is left alone.
        assert found[fresh] == "in_progress"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert (await statuses(database_url))[fresh] == "completed"


async def test_bad_configuration_exits_with_a_clear_message(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(DATA_DIR=str(tmp_path), PORT="http", DATABASE_URL="mysql://x")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "server.py"), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"configuration error: PORT must be an integer" in err


async def test_second_process_on_the_same_data_dir_is_refused(tmp_path: Path, database_url: str):
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url}
    async with server_process(env) as (proc, _url):
        full = dict(os.environ, PORT="0", **env)
        other = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "server.py"), cwd=REPO, env=full,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(other.communicate(), 60)
        assert other.returncode == 2 and b"in use by another server process" in err
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
