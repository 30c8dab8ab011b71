"""WORKERS=2: sessions pinned to worker processes behind one front."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import asyncpg

from engine.session import worker_of
from media.ice import use_loopback_only
from testing import Candidate, SpeechTrack, transcript_of, wer
from tests.conftest import CLIP
from tests.test_process import server_process


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
    # SIGTERM ended and saved the other live sessions in every worker.
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        for session_id in ids:
            async with http.get(f"{url}/sessions/{session_id}") as resp:
                assert (await resp.json())["status"] == "completed"
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
    try:  # the orphaned worker ended and saved its live session on the way out
        status = await conn.fetchval("SELECT status FROM interview_sessions WHERE session_id = $1",
                                     uuid.UUID(session_id))
    finally:
        await conn.close()
    assert status == "completed"
