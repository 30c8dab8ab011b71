"""The server as a process: the README's start command, SIGTERM, a killed process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg

from testing import start_server
from tests.conftest import CLIP, REPO
from testing import Candidate, SpeechTrack


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
    """The README's command: no keys, no database; SIGTERM saves every live
    session, and an invitation nobody used yet survives it."""
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
        async with http.get(f"{url}/sessions/{first}") as resp:
            row = await resp.json()
            assert row["status"] == "completed" and row["end_time"] is not None
        async with http.get(f"{url}/sessions/{second}") as resp:
            row = await resp.json()
            assert row["status"] == "scheduled" and row["end_time"] is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def join(http: aiohttp.ClientSession, url: str, sid: str, token: str = "") -> Candidate:
    """A real peer (data channel only) joins the session."""
    candidate = Candidate(None, None)
    offer = {"sdp": await candidate.offer(), "type": "offer"}
    async with http.post(f"{url}/sessions/{sid}/offer", json=offer,
                         params={"token": token} if token else {}) as resp:
        assert resp.status == 200, await resp.text()
        await candidate.accept((await resp.json())["sdp"])
    await asyncio.wait_for(candidate.opened.wait(), 20)
    return candidate


async def wait_status(dsn: str, sid: str, status: str) -> None:
    for _ in range(100):
        if (await statuses(dsn)).get(sid) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sid} is {(await statuses(dsn)).get(sid)}, not {status}")


MEDIA_LIGHT = {"ICE_LOOPBACK_ONLY": "1", "INTERVIEWER": "0", "RECORDING": "0"}


async def test_killed_server_rows_become_interrupted(tmp_path: Path, database_url: str):
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "CHECKPOINT_S": "0.2",
           **MEDIA_LIGHT}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        sid = await create(http, url, "QA")
        candidate = await join(http, url, sid)
        await wait_status(database_url, sid, "in_progress")  # joined: checkpointed
        proc.kill()
        await proc.wait()
        await candidate.close()
    assert (await statuses(database_url))[sid] == "in_progress"
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        fresh = await create(http, url, "SRE")
        fresh_candidate = await join(http, url, fresh)
        for _ in range(100):  # the start-up sweep runs in the background
            found = await statuses(database_url)
            if found[sid] != "in_progress":
                break
            await asyncio.sleep(0.1)
        assert found[sid] == "interrupted"
        # The new process's own live session is left alone.
        await wait_status(database_url, fresh, "in_progress")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await fresh_candidate.close()
    assert (await statuses(database_url))[fresh] == "completed"


async def test_invitations_survive_a_crash_and_keep_their_tokens(tmp_path: Path, database_url: str):
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "CHECKPOINT_S": "0.2",
           "API_KEY": "k", **MEDIA_LIGHT}
    key = {"Authorization": "Bearer k"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        invites = []
        for role in ("QA", "SRE"):
            async with http.post(f"{url}/sessions", json={"job_role": role}, headers=key) as resp:
                invites.append(await resp.json())
        proc.kill()  # a crash: nothing is saved on the way out
        await proc.wait()
    first, second = (i["session_id"] for i in invites)
    assert {s for i, s in (await statuses(database_url)).items()} == {"scheduled"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        await asyncio.sleep(1.0)  # the start-up sweep has run: it leaves invitations alone
        assert (await statuses(database_url))[first] == "scheduled"
        async with http.get(f"{url}/sessions/{first}", headers=key) as resp:
            assert (await resp.json())["session_information"]["job_role"] == "QA"
        # Only the session's own token opens it, as before the crash.
        stranger = Candidate(None, None)
        offer = {"sdp": await stranger.offer(), "type": "offer"}
        await stranger.close()
        async with http.post(f"{url}/sessions/{first}/offer", json=offer,
                             params={"token": invites[1]["token"]}) as resp:
            assert resp.status in (401, 404)
        candidate = await join(http, url, first, invites[0]["token"])
        await wait_status(database_url, first, "in_progress")
        async with http.post(f"{url}/sessions/{first}/end", headers=key) as resp:
            assert resp.status == 200
        await candidate.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    found = await statuses(database_url)
    assert found[first] == "completed" and found[second] == "scheduled"


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


async def test_docker_stop_leaves_a_closed_row_and_a_finished_recording(
    tmp_path: Path, database_url: str
):
    """`docker stop`: SIGTERM, then SIGKILL after 10 s. Whatever was live by then
    is saved as ended, with its report, and its recording is a finished file."""
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "DATABASE_URL": database_url, "ICE_LOOPBACK_ONLY": "1",
           "INTERVIEWER": "0", "RECORDING": "1"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        sid = await create(http, url, "QA")
        candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
        offer = {"sdp": await candidate.offer(), "type": "offer"}
        async with http.post(f"{url}/sessions/{sid}/offer", json=offer) as resp:
            await candidate.accept((await resp.json())["sdp"])
        await asyncio.wait_for(candidate.opened.wait(), 20)
        await asyncio.sleep(3)  # mid-answer
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)  # docker's default stop timeout
        except asyncio.TimeoutError:
            proc.kill()  # what docker does next
            await proc.wait()
        await candidate.close()
    assert (await statuses(database_url))[sid] == "completed"
    recordings = data / "recordings"
    assert (recordings / f"{sid}.webm").is_file()
    assert not list(recordings.glob("*.part"))
    conn = await asyncpg.connect(database_url)
    try:
        info = await conn.fetchval(
            "SELECT session_information FROM interview_sessions WHERE session_id = $1",
            uuid.UUID(sid))
    finally:
        await conn.close()
    assert "closing" not in json.loads(info)  # the second write (after the drain) landed too
