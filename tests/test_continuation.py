"""A node killed mid-interview: the candidate rejoins another node and the
interview goes on from its last checkpoint (issue 15).

Two real server processes share one PostgreSQL. The candidate (a real
aiortc peer) answers the first question on node A; A is killed with SIGKILL;
the candidate's rejoin reaches node B, which takes the interview over once
A's heartbeat has stopped: the interviewer says "welcome back" and asks the
question it was at, and the row keeps what was said before the crash.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from testing import Candidate, ScriptedSpeech, SignalingFailed, start_server
from tests.conftest import SPEECH

KEY = {"Authorization": "Bearer k3y"}
ANSWER = SPEECH / "sense_and_sensibility_01_austen_64kb-0870.wav"
NODE_ENV = {
    "API_KEY": "k3y", "ICE_LOOPBACK_ONLY": "1", "CHECKPOINT_S": "0.5",
    "NODE_HEARTBEAT_S": "0.5", "NODE_DEAD_S": "2", "END_OF_TURN_S": "1.0", "NUDGE_S": "60",
    "TURN_DETECTION": "silence", "RECORDING": "0",
}


async def _row(db: asyncpg.Connection, sid: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM interview_sessions WHERE session_id = $1",
                            uuid.UUID(sid))
    assert row is not None
    return {**dict(row), "info": json.loads(row["session_information"] or "{}")}


async def _until(probe: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := await probe()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)
    return result


async def test_an_interview_goes_on_on_another_node_after_its_node_is_killed(
    database_url: str, db: asyncpg.Connection, tmp_path: Path
):
    env = {**NODE_ENV, "DATABASE_URL": database_url}
    async with (
        start_server({**env, "DATA_DIR": str(tmp_path / "a")}, log_path=tmp_path / "a.log") as a,
        start_server({**env, "DATA_DIR": str(tmp_path / "b")}, log_path=tmp_path / "b.log") as b,
        aiohttp.ClientSession(base_url=a.url) as at_a,
        aiohttp.ClientSession(base_url=b.url) as at_b,
    ):
        async with at_a.post("/sessions", json={"job_role": "Backend engineer"},
                             headers=KEY) as resp:
            created = await resp.json()
        sid, token = created["session_id"], {"Authorization": f"Bearer {created['token']}"}
        voice = ScriptedSpeech()
        first = Candidate(voice, None)
        await first.join(at_a, sid, headers=token)
        await _until(lambda: _listening(first, 1), 60)
        voice.say(ANSWER)
        # The answer is taken and the interviewer moves on; the checkpoint has it.
        saved = await _until(lambda: _answered(db, sid), 60)
        before = saved["info"]["conversation_history"]
        node_a = saved["info"]["server_instance"]

        a.process.kill()  # SIGKILL: no goodbye, no final row
        await a.process.wait()
        killed = time.monotonic()
        await first.close()

        second = Candidate(ScriptedSpeech(), None)
        try:
            refusals = await _rejoin(second, at_b, sid, token, timeout_s=30)
            took = time.monotonic() - killed
            said = await second.wait_for("interviewer", timeout=30)
            text = " ".join(e["text"] for e in said)
            assert "Welcome back" in text, text
            row = await _until(lambda: _held_by_other(db, sid, node_a), 15)
            assert row["status"] == "in_progress"
            assert row["info"]["continued_from"] == node_a
            history = row["info"]["conversation_history"]
            assert history[:len(before)] == before  # nothing said before the crash is lost
            async with at_b.get(f"/sessions/{sid}", headers=KEY) as resp:
                assert resp.status == 200 and resp.headers["X-Node"] != node_a
            async with at_b.post(f"/sessions/{sid}/end", headers=KEY) as resp:
                assert resp.status == 200, await resp.text()
        finally:
            await second.close()
        final = await _until(lambda: _completed(db, sid), 30)
        assert final["info"]["conversation_history"][:len(before)] == before
        assert any("Welcome back" in t["content"]
                   for t in final["info"]["conversation_history"][len(before):])
        # A rejoin with a wrong token learns nothing of the ended session: a
        # 404, as for an id that never existed.
        for sid_tried in (sid, str(uuid.uuid4())):
            async with at_b.post(f"/sessions/{sid_tried}/offer",
                                 json={"sdp": "v=0", "type": "offer"},
                                 headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 404, (sid_tried, resp.status, await resp.text())
        print(f"rejoined {took:.1f}s after the kill, after {refusals} refusal(s)")


async def _listening(candidate: Candidate[Any, Any], count: int) -> bool:
    return sum(1 for e in candidate.of("state") if e["state"] == "listening") >= count


async def _answered(db: asyncpg.Connection, sid: str) -> dict[str, Any] | None:
    row = await _row(db, sid)
    history = row["info"].get("conversation_history") or []
    roles = [t["role"] for t in history]
    state = (row["info"].get("continuation") or {}).get("interviewer") or {}
    if roles[:3] == ["assistant", "user", "assistant"] and state.get("questions"):
        return row
    return None


async def _rejoin(candidate: Candidate[Any, Any], http: aiohttp.ClientSession, sid: str,
                  token: dict[str, str], timeout_s: float) -> int:
    """Offer until the node takes it (503 while the dead node still counts as alive)."""
    deadline = time.monotonic() + timeout_s
    refusals = 0
    while True:
        try:
            await candidate.join(http, sid, headers=token)
            return refusals
        except SignalingFailed as exc:
            assert "HTTP 503" in str(exc), exc
            assert time.monotonic() < deadline, f"not continued within {timeout_s} s: {exc}"
            refusals += 1
            await candidate.close()
            await asyncio.sleep(1.0)
            candidate.__init__(ScriptedSpeech(), None)  # type: ignore[misc]


async def _held_by_other(db: asyncpg.Connection, sid: str, node_a: str) -> dict[str, Any] | None:
    row = await _row(db, sid)
    return row if row["info"].get("server_instance") not in (None, node_a) else None


async def _completed(db: asyncpg.Connection, sid: str) -> dict[str, Any] | None:
    row = await _row(db, sid)
    closing = row["info"].get("closing")
    return row if row["status"] == "completed" and not closing else None
