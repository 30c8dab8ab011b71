"""WORKERS=2: sessions pinned to worker processes behind one front, which
restarts a dead worker and checks the API key before reading large bodies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from routing import worker_of
from config import Config
from media.ice import use_loopback_only
from testing import Candidate, SpeechTrack, transcript_of, wer
from tests.conftest import CLIP
from tests.test_process import server_process
from workers import WorkerSettings, attach


async def test_two_workers_share_the_sessions(tmp_path, database_url: str):
    use_loopback_only()  # this test's candidate, like the server, stays on 127.0.0.1
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "WORKERS": "2",
           "ICE_LOOPBACK_ONLY": "1", "INTERVIEWER": "0", "RECORDING": "0"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        ids = []
        for _ in range(4):
            async with http.post(f"{url}/sessions", json={"job_role": "QA"}) as resp:
                assert resp.status == 201
                body = await resp.json()
                ids.append(uuid.UUID(body["session_id"]))
                assert body["join_url"].startswith(url)  # the front's address, not a worker's
        assert sorted(worker_of(i, 2) for i in ids) == [0, 0, 1, 1]  # spread over both
        candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
        try:
            await candidate.connect(http, f"{url}/sessions/{ids[1]}/offer", timeout_s=20)
            (transcript,) = await candidate.wait_for("transcript", timeout=60)
            assert wer(transcript_of(CLIP), transcript["text"]) <= 0.15
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
                assert 'interview_live_sessions{worker="0"} 2.0' in text
                assert 'interview_live_sessions{worker="1"} 2.0' in text
        finally:
            await candidate.close()
        async with http.post(f"{url}/sessions/{ids[1]}/end") as resp:
            assert (await resp.json())["status"] == "ended"
        async with http.get(f"{url}/sessions/{ids[1]}") as resp:
            row = await resp.json()
            assert row["status"] == "completed"
            (turn,) = row["session_information"]["conversation_history"]
            assert turn["role"] == "user"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    # SIGTERM left the invitations nobody used open, in every worker.
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        for session_id in ids:
            async with http.get(f"{url}/sessions/{session_id}") as resp:
                expected = "completed" if session_id == ids[1] else "scheduled"
                assert (await resp.json())["status"] == expected
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path, database_url: str):
    import psutil

    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "WORKERS": "2"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/sessions", json={"job_role": "QA"}) as resp:
            session_id = (await resp.json())["session_id"]
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        proc.kill()  # no chance to stop its workers itself
        await proc.wait()
        gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, 30)
        assert not alive and len(gone) == 2
    conn = await asyncpg.connect(database_url)
    try:  # the orphaned workers stopped cleanly; the unused invitation stays open
        status = await conn.fetchval("SELECT status FROM interview_sessions WHERE session_id = $1",
                                     uuid.UUID(session_id))
    finally:
        await conn.close()
    assert status == "scheduled"


KEY = "front-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == (503 if body["status"] in ("down", "draining", "full") else 200)
        return body


async def _health_until(http: aiohttp.ClientSession, url: str,
                        ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll `/healthz` (another process's state: no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not ready(health := await _health(http, url)):
        assert loop.time() < deadline, health
        await asyncio.sleep(0.05)
    return health


async def _create(http: aiohttp.ClientSession, url: str) -> uuid.UUID:
    async with http.post(f"{url}/sessions", json={"job_role": "QA"}, headers=AUTH) as resp:
        assert resp.status == 201, await resp.text()
        return uuid.UUID((await resp.json())["session_id"])


async def test_a_killed_worker_comes_back_and_its_sessions_wait_for_it(
    tmp_path, database_url: str
):
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "WORKERS": "2",
           "API_KEY": KEY, "INTERVIEWER": "0", "RECORDING": "0"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        first, second = await _create(http, url), await _create(http, url)
        owned = {worker_of(first, 2): first, worker_of(second, 2): second}
        assert sorted(owned) == [0, 1]  # a tie takes turns
        health = await _health(http, url)
        assert health["status"] == "ok" and health["live_sessions"] == 2
        killed = health["workers"][1]["pid"]
        os.kill(killed, signal.SIGKILL)

        down = await _health_until(
            http, url, lambda h: h["workers"][1]["state"] in ("down", "starting"))
        assert down["status"] == "degraded"
        assert down["workers"][0]["state"] == "up"
        assert down["workers"][1]["last_exit"] == "was killed by SIGKILL"
        assert down["workers"][1]["live_sessions"] is None
        assert down["live_sessions"] == 1  # worker 0's only: no garbage for the dead one
        if down["workers"][1]["state"] == "down":  # not restarted yet (it may be, already)
            # A read is answered by the live worker, from the row in the
            # database, as a surviving node answers for a dead one.
            async with http.get(f"{url}/sessions/{owned[1]}", headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["session_information"]["job_role"] == "QA"
            # A write waits for the worker that holds the session.
            async with http.post(f"{url}/sessions/{owned[1]}/end", headers=AUTH) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
                assert "worker 1" in (await resp.json())["error"]
        async with http.get(f"{url}/sessions/{owned[0]}", headers=AUTH) as resp:
            assert resp.status == 200  # the other worker's sessions carry on
        assert worker_of(await _create(http, url), 2) == 0  # new sessions: live workers only

        back = await _health_until(http, url, lambda h: h["status"] == "ok")
        assert back["workers"][1]["restarts"] == 1
        assert back["workers"][1]["pid"] not in (None, killed)
        # Same slot, same data directory: the restarted worker answers for the
        # dead one's session, an invitation nobody used yet: it waits again.
        row = await _row_until(http, url, owned[1], "scheduled")
        assert row["session_information"]["job_role"] == "QA"
        # The least loaded worker (none live) is the restarted one.
        fresh = await _create(http, url)
        assert worker_of(fresh, 2) == 1
        async with http.get(f"{url}/sessions/{fresh}", headers=AUTH) as resp:
            assert (await resp.json())["status"] == "scheduled"

        # Draining the machine drains every worker; new sessions are refused.
        async with http.post(f"{url}/admin/drain", headers=AUTH, json={"deadline_s": 60}) as resp:
            assert resp.status == 202, await resp.text()
            drained = (await resp.json())["workers"]
            assert [w["worker"] for w in drained] == [0, 1]
            assert all(w["draining"] for w in drained)
        async with http.post(f"{url}/sessions", headers=AUTH, json={"job_role": "QA"}) as resp:
            assert resp.status == 503 and "draining" in (await resp.json())["error"]
        async with http.get(f"{url}/sessions/{fresh}", headers=AUTH) as resp:
            assert resp.status == 200  # its own sessions are still served
        async with http.delete(f"{url}/admin/drain", headers=AUTH) as resp:
            assert resp.status == 200 and not any(w["draining"] for w in
                                                  (await resp.json())["workers"])
        assert await _create(http, url)
        async with http.post(f"{url}/admin/drain", json={}) as resp:
            assert resp.status == 401  # management only
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_sigterm_drains_every_worker_while_the_front_routes_their_calls(
    tmp_path, database_url: str
):
    use_loopback_only()
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "WORKERS": "2",
           "API_KEY": KEY, "ICE_LOOPBACK_ONLY": "1", "INTERVIEWER": "0", "RECORDING": "0",
           "DRAIN_TIMEOUT_S": "120"}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/sessions", json={"job_role": "QA"}, headers=AUTH) as resp:
            created = await resp.json()
        session_id = created["session_id"]
        token = {"Authorization": f"Bearer {created['token']}"}
        candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
        try:
            await candidate.connect(http, f"{url}/sessions/{session_id}/offer",
                                    headers=token, timeout_s=20)
            await candidate.wait_for("transcript", timeout=60)
            proc.send_signal(signal.SIGTERM)
            # The machine drains: its health says so, new sessions are refused,
            # and the live interview's calls still reach its worker.
            # Worker 1 holds nothing: its drain is over at once and it stops.
            health = await _health_until(http, url, lambda h: h["status"] == "draining")
            assert health["workers"][0]["status"] == "draining"
            await _health_until(http, url, lambda h: h["workers"][1]["state"] == "stopped")
            async with http.post(f"{url}/sessions", json={"job_role": "QA"},
                                 headers=AUTH) as resp:
                assert resp.status == 503 and "draining" in (await resp.json())["error"]
            async with http.get(f"{url}/sessions/{session_id}", headers=AUTH) as resp:
                assert (await resp.json())["status"] == "in_progress"
            assert proc.returncode is None
            async with http.post(f"{url}/sessions/{session_id}/end", headers=token) as resp:
                assert resp.status == 200, await resp.text()
        finally:
            await candidate.close()
        # Its last interview over, the machine stops by itself, well before the deadline.
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    async with server_process({**env, "DRAIN_TIMEOUT_S": "0"}) as (proc, url), \
            aiohttp.ClientSession() as http:
        row = await _row_until(http, url, uuid.UUID(session_id), "completed")
        assert row["session_information"]["conversation_history"]  # what was said was kept
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


async def _row_until(http: aiohttp.ClientSession, url: str, session_id: uuid.UUID,
                     status: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with http.get(f"{url}/sessions/{session_id}", headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            row: dict[str, Any] = await resp.json()
        if row["status"] == status:
            return row
        assert loop.time() < deadline, row
        await asyncio.sleep(0.1)


async def _raw_status(url: str, head: str) -> int:
    """Send only a request head (no body at all) and read the status it gets."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_the_front_checks_the_api_key_before_reading_a_body(tmp_path, database_url: str):
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "WORKERS": "2",
           "API_KEY": KEY, "CORS_ORIGINS": "https://app.example"}
    huge = 100 * 1024 * 1024
    create = (f"POST /sessions HTTP/1.1\nHost: x\nContent-Type: multipart/form-data; "
              f"boundary=b\nContent-Length: {huge}\n")
    async with server_process(env) as (proc, url):
        # Each answer comes while the declared 100 MB are still unsent.
        assert await _raw_status(url, create) == 401
        assert await _raw_status(url, create + "Authorization: Bearer wrong\n") == 401
        assert await _raw_status(url, create + f"Authorization: Bearer {KEY}\n") == 413
        offer = (f"POST /sessions/{uuid.uuid4()}/offer HTTP/1.1\nHost: x\n"
                 f"Content-Type: application/json\nContent-Length: {128 * 1024}\n")
        assert await _raw_status(url, offer) == 413  # more than any candidate call sends
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/metrics", headers={"Origin": "https://app.example"}) as resp:
                assert resp.status == 401  # the front's own answer, readable cross-origin
                assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            async with http.get(f"{url}/metrics", headers=AUTH) as resp:
                text = await resp.text()
                assert 'interview_worker_up{worker="1"} 1' in text
                assert 'interview_live_sessions{worker="0"} 0.0' in text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


def test_a_worker_gets_its_settings_and_socket_over_its_link(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    parent, child = socket.socketpair()
    # The worker's own descriptors, as a child process would get them.
    settings = WorkerSettings(1, tmp_path / "worker-1", "postgresql://u:secret@db/x",
                              os.dup(listener.fileno()))
    assert "secret" not in repr(settings)
    parent.sendall(settings.encode())
    link = attach(["--worker-link", str(child.detach())])
    try:
        assert link is not None and link.settings == settings
        assert link.listener.getsockname() == listener.getsockname()
        config = link.config(Config(workers=2, api_key="k"))
        assert (config.worker_index, config.data_dir) == (1, tmp_path / "worker-1")
        assert config.api_key == "k"  # the rest comes from the worker's own environment
        assert config.database_url == settings.database_url
        assert attach([]) is None  # not started by a supervisor
    finally:
        parent.close()
        if link is not None:
            link.channel.close()
            link.listener.close()
        listener.close()
