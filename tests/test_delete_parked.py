"""Deleting or ending an interview whose candidate dropped closes the rejoin
window, through the API and with real peers (issue 11)."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from api.keys import REGISTRY
from testing import Candidate, SpeechTrack
from tests.conftest import CLIP, AppFactory
from tests.test_media import live_client, stored_row

KEY = {"Authorization": "Bearer k3y"}


@pytest.mark.parametrize(("method", "suffix", "status"),
                         [("DELETE", "", "deleted"), ("POST", "/end", "ended")])
async def test_ending_a_parked_interview_closes_its_rejoin_window(
    make_client: AppFactory, db: asyncpg.Connection, method: str, suffix: str, status: str
):
    client = await live_client(make_client, rejoin_grace_s=60.0, api_key="k3y")
    created = await client.post("/sessions", json={"job_role": "Backend engineer"}, headers=KEY)
    body = await created.json()
    sid, token = body["session_id"], {"Authorization": f"Bearer {body['token']}"}
    first = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
    await first.join(client, sid, headers=token)
    await first.close()  # the network drops
    saved = await stored_row(db, sid, timeout=15)
    assert saved["status"] == "completed"
    registry = client.server.app[REGISTRY]
    # The row is written before the ending task parks the interview, so the
    # test may read it a moment earlier: wait for the park itself.
    for _ in range(50):
        if registry.parked(uuid.UUID(sid)) is not None:
            break
        await asyncio.sleep(0.1)
    assert registry.parked(uuid.UUID(sid)) is not None  # inside the rejoin window

    resp = await client.request(method, f"/sessions/{sid}{suffix}", headers=KEY)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == status
    assert registry.parked(uuid.UUID(sid)) is None

    late = Candidate(None, None)
    try:
        resp = await client.post(f"/sessions/{sid}/offer", headers=token,
                                 json={"sdp": await late.offer(), "type": "offer"})
        assert resp.status in (404, 409), await resp.text()
    finally:
        await late.close()
    assert registry.get(uuid.UUID(sid)) is None
    row = await db.fetchrow("SELECT * FROM interview_sessions WHERE session_id = $1",
                            uuid.UUID(sid))
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 1
    assert row["status"] == "completed"
    info, saved_info = json.loads(row["session_information"]), json.loads(saved["session_information"])
    for field in ("job_role", "conversation_history", "anomalies_detected", "date_of_interview"):
        assert info[field] == saved_info[field], field
    # Further ends answer "not live" (409), as for any ended session.
    again = await client.request(method, f"/sessions/{sid}{suffix}", headers=KEY)
    assert again.status == 409
