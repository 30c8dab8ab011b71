"""Several nodes on one PostgreSQL (issue 15): the node directory, forwarding
a session's calls to the node that holds it, draining, and the sweep that
closes the interviews of a node whose heartbeat stopped."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from api.keys import NODE
from testing import Candidate, SpeechTrack
from tests.conftest import CLIP, AppFactory
from tests.test_media import live_client, new_session, stored_row

KEY = {"Authorization": "Bearer k3y"}
FAST = {"node_heartbeat_s": 0.2, "node_dead_s": 1.0}


async def _node(make_client: AppFactory, tmp_path: Path, name: str, **overrides: Any) -> TestClient:
    client = await live_client(make_client, api_key="k3y", data_dir=tmp_path / name,
                               **FAST, **overrides)
    client.server.app[NODE].url = str(client.make_url("")).rstrip("/")
    return client


def _token(created: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {created['token']}"}


async def _until(probe: Any, timeout_s: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (result := await probe()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return result


async def test_a_call_to_another_node_is_forwarded_to_the_one_holding_the_session(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    a = await _node(make_client, tmp_path, "a")
    b = await _node(make_client, tmp_path, "b")
    node_a, node_b = a.server.app[NODE].node_id, b.server.app[NODE].node_id
    assert node_a != node_b
    created = await new_session(a, headers=KEY)
    sid = created["session_id"]
    candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
    await candidate.join(a, sid, headers=_token(created))
    try:
        await _until(lambda: db.fetchval(
            "SELECT node_id FROM node_sessions WHERE session_id = $1", uuid.UUID(sid)))
        # Node B does not hold it: it forwards, and A answers with the live row.
        resp = await b.get(f"/sessions/{sid}", headers=KEY)
        assert resp.status == 200 and resp.headers["X-Node"] == node_a
        assert (await resp.json())["status"] == "in_progress"
        # Credentials are checked where the session is: a wrong key is refused there.
        refused = await b.get(f"/sessions/{sid}", headers={"Authorization": "Bearer nope"})
        assert refused.status == 401 and refused.headers["X-Node"] == node_a
        # The holder builds the caller's links from the address the caller used.
        minted = await b.post(f"/sessions/{sid}/review-tokens", headers=KEY, json={})
        assert minted.status == 201 and minted.headers["X-Node"] == node_a
        assert (await minted.json())["review_url"].startswith(str(b.make_url("/review/")))
        nodes = await (await b.get("/admin/nodes", headers=KEY)).json()
        assert {n["node_id"] for n in nodes["nodes"]} >= {node_a, node_b}
        # Ending through B ends it on A.
        ended = await b.post(f"/sessions/{sid}/end", headers=KEY)
        assert ended.status == 200, await ended.text()
        row = await stored_row(db, sid)
        assert row["status"] == "completed"
        # Ended: nobody holds it, and any node answers from the database.
        await _until(lambda: _not_held(db, sid))
        here = await b.get(f"/sessions/{sid}", headers=KEY)
        assert here.status == 200 and here.headers["X-Node"] == node_b
        assert (await here.json())["status"] == "completed"
    finally:
        await candidate.close()


async def _not_held(db: asyncpg.Connection, sid: str) -> bool:
    held = await db.fetchval("SELECT count(*) FROM node_sessions WHERE session_id = $1",
                             uuid.UUID(sid))
    return bool(held == 0)


async def test_a_draining_node_takes_no_new_session_and_closes_its_own_at_the_deadline(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    client = await _node(make_client, tmp_path, "a")
    created = await new_session(client, headers=KEY)
    sid = created["session_id"]
    candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
    await candidate.join(client, sid, headers=_token(created))
    try:
        assert (await client.get("/healthz")).status == 200
        resp = await client.post("/admin/drain", json={"deadline_s": 3}, headers=KEY)
        assert resp.status == 202
        assert (await resp.json())["interviews"] == 1
        health = await client.get("/healthz")
        assert health.status == 503 and (await health.json())["status"] == "draining"
        refused = await client.post("/sessions", json={"job_role": "x"}, headers=KEY)
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        assert "draining" in (await refused.json())["error"]
        # The interview in progress goes on meanwhile...
        candidate.send({"type": "ping"})
        await candidate.wait_for("pong", timeout=5)
        assert (await db.fetchval("SELECT status FROM interview_sessions WHERE session_id = $1",
                                  uuid.UUID(sid))) in ("scheduled", "in_progress")
        # ...and is saved and closed at the deadline.
        row = await stored_row(db, sid, timeout=15)
        assert row["status"] == "completed"
        beat = await _until(lambda: db.fetchrow(
            "SELECT draining, admits FROM server_nodes WHERE node_id = $1",
            client.server.app[NODE].node_id))
        assert beat["draining"] is True and beat["admits"] is False
        # Undrained, it admits again.
        assert (await client.delete("/admin/drain", headers=KEY)).status == 200
        assert (await client.get("/healthz")).status == 200
        assert (await client.post("/sessions", json={"job_role": "x"}, headers=KEY)).status == 201
        for bad in ({"deadline_s": -1}, {"deadline_s": "soon"}, {"when": 1}):
            resp = await client.post("/admin/drain", json=bad, headers=KEY)
            assert resp.status == 400, bad
    finally:
        await candidate.close()


async def test_the_interviews_of_a_dead_node_become_interrupted(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    """A node whose heartbeat stopped (its process killed: tests/test_topology.py
    does it for real) leaves rows `in_progress`; a live node closes them."""
    client = await _node(make_client, tmp_path, "alive")  # (its start creates the schema)
    stale = datetime.now(timezone.utc) - timedelta(seconds=30)
    held, fresh, ended = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    info = json.dumps({"job_role": "x", "checkpoint_at": stale.isoformat()})
    for sid, status in ((held, "in_progress"), (fresh, "in_progress"), (ended, "completed")):
        await db.execute(
            "INSERT INTO interview_sessions (session_id, start_time, status, session_information)"
            " VALUES ($1, $2, $3, $4::jsonb)", sid, stale, status, info)
    # `fresh` was checkpointed a moment ago: its node may be alive after all.
    await db.execute(
        "UPDATE interview_sessions SET session_information = jsonb_set(session_information,"
        " '{checkpoint_at}', to_jsonb((now() + interval '1 hour')::text)) WHERE session_id = $1",
        fresh)  # (ahead: "a moment ago" however slow this machine is)
    async with db.transaction():  # one step: the live node's sweep must not see half
        await db.execute(
            "INSERT INTO server_nodes (node_id, url, admits, draining, live_sessions, load,"
            " started_at, heartbeat_at) VALUES ('dead', 'http://10.0.0.9:8080', true, false, 3,"
            " 0, $1, $1)", stale)
        await db.executemany(
            "INSERT INTO node_sessions (session_id, node_id) VALUES ($1, 'dead')",
            [(held,), (fresh,), (ended,)])
    row = await _until(lambda: db.fetchrow(
        "SELECT status FROM interview_sessions WHERE session_id = $1 AND status = 'interrupted'",
        held), timeout_s=5)
    assert row["status"] == "interrupted"
    statuses = dict(await db.fetch("SELECT session_id, status FROM interview_sessions"))
    assert statuses[fresh] == "in_progress" and statuses[ended] == "completed"
    # The dead node stays listed while one of its interviews may still be alive.
    assert await db.fetchval("SELECT count(*) FROM server_nodes WHERE node_id = 'dead'") == 1
    metrics = await (await client.get("/metrics", headers=KEY)).text()
    assert "interview_node_sweep_interrupted_total 1.0" in metrics
    # A forwarded call for a session of a node that is gone is answered here.
    resp = await client.get(f"/sessions/{held}", headers=KEY)
    assert resp.status == 200 and (await resp.json())["status"] == "interrupted"


async def test_no_node_takes_over_a_session_its_live_recorder_has_not_reported_yet(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    """A claim is refused while the node named in the row as its recorder is
    alive, even before that node's heartbeat lists the session."""
    client = await _node(make_client, tmp_path, "b")
    node = client.server.app[NODE]
    directory = node.directory
    await _until(lambda: db.fetchval("SELECT 1 FROM server_nodes WHERE node_id = $1",
                                     node.node_id))  # its first heartbeat
    sid = uuid.uuid4()
    info = json.dumps({"job_role": "x", "server_instance": "a"})
    await db.execute(
        "INSERT INTO interview_sessions (session_id, start_time, status, session_information)"
        " VALUES ($1, now(), 'in_progress', $2::jsonb)", sid, info)
    await db.execute(
        "INSERT INTO server_nodes (node_id, url, admits, draining, live_sessions, load,"
        " started_at, heartbeat_at) VALUES ('a', 'http://10.0.0.9:8080', true, false, 0, 0,"
        " now(), now() + interval '1 hour')")  # alive, and lists nothing
    assert not await directory.claim(sid, node.node_id)
    await db.execute("UPDATE server_nodes SET heartbeat_at = now() - interval '1 hour'"
                     " WHERE node_id = 'a'")  # now 'a' is dead
    assert await directory.claim(sid, node.node_id)
    owner = await directory.owner(sid)
    assert owner is not None and owner.node_id == node.node_id


async def test_a_recording_is_served_by_any_node_and_outlives_its_node_with_a_shared_media_dir(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    """Without a shared MEDIA_DIR another node forwards a file call to the
    node that recorded it while that node is up; with one, any node serves
    it, also after the recording node is gone."""
    for shared in (None, tmp_path / "media"):
        name = "shared" if shared else "own"
        a = await _node(make_client, tmp_path, f"a-{name}", media_dir=shared)
        b = await _node(make_client, tmp_path, f"b-{name}", media_dir=shared)
        node_a, node_b = a.server.app[NODE].node_id, b.server.app[NODE].node_id
        created = await new_session(a, headers=KEY)
        sid = created["session_id"]
        candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
        await candidate.join(a, sid, headers=_token(created))
        try:
            await candidate.wait_for("transcript", timeout=60)
            ended = await a.post(f"/sessions/{sid}/end", headers=KEY)
            assert ended.status == 200, await ended.text()
        finally:
            await candidate.close()
        row = await stored_row(db, sid)
        assert row["recording_url"].endswith(f"/sessions/{sid}/recording")
        path = f"/sessions/{sid}/recording"
        # The recording is finished a moment after the row (it is still being written).
        await _until(lambda: _status_is(a, path, 200), timeout_s=30)
        resp = await b.get(path, headers=KEY)
        assert resp.status == 200, await resp.text()
        if not shared:
            assert resp.headers["X-Node"] == node_a  # forwarded to the recorder
        # (with a shared one, B serves it, or forwards to A while A's last
        # heartbeat still lists the session as held there)
        assert (await resp.read())[:4] == b"\x1a\x45\xdf\xa3"  # WebM (EBML)
        await a.close()  # the recording node is gone (it leaves the directory)
        resp = await b.get(path, headers=KEY)
        if shared:
            assert resp.status == 200 and (await resp.read())[:4] == b"\x1a\x45\xdf\xa3"
        else:
            assert resp.status == 404 and "recording" in (await resp.json())["error"]
        await b.close()


async def _status_is(client: TestClient, path: str, status: int) -> bool:
    resp = await client.get(path, headers=KEY)
    await resp.read()
    return resp.status == status


async def test_local_mode_nodes_forward_to_each_other(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    """Without an API key a node checks the Host it is called by: a forwarded
    call keeps the node's own, and the caller's goes as X-Forwarded-Host."""
    nodes = []
    for name in ("a", "b"):
        client = await live_client(make_client, data_dir=tmp_path / name, **FAST)
        client.server.app[NODE].url = str(client.make_url("")).rstrip("/")
        nodes.append(client)
    a, b = nodes
    created = await new_session(a)
    sid = created["session_id"]
    candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
    await candidate.join(a, sid)
    try:
        await _until(lambda: db.fetchval(
            "SELECT node_id FROM node_sessions WHERE session_id = $1", uuid.UUID(sid)))
        resp = await b.post(f"/sessions/{sid}/review-tokens", json={})
        assert resp.status == 201, await resp.text()
        assert resp.headers["X-Node"] == a.server.app[NODE].node_id
        assert (await resp.json())["review_url"].startswith(str(b.make_url("/review/")))
    finally:
        await candidate.close()


async def test_a_takeover_reopens_decisions_about_flags_it_lost(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
):
    """Flags the dead node had not checkpointed are gone, and the survivor's
    next anomalies take their numbers: decisions about them are set open
    again, in the log, so they cannot stick to another anomaly."""
    client = await _node(make_client, tmp_path, "b")
    node = client.server.app[NODE]
    await _until(lambda: db.fetchval("SELECT 1 FROM server_nodes WHERE node_id = $1",
                                     node.node_id))
    sid = uuid.uuid4()
    info = json.dumps({"job_role": "x", "server_instance": "a",
                       "anomalies_detected": [{"type": "multiple_persons"}]})
    await db.execute(
        "INSERT INTO interview_sessions (session_id, start_time, status, session_information)"
        " VALUES ($1, now(), 'interrupted', $2::jsonb)", sid, info)
    for flag in (0, 1, 2):  # decided on the live row, which had 3 flags
        await db.execute(
            "INSERT INTO interview_review_decisions (session_id, flag_index, decision,"
            " decided_by) VALUES ($1, $2, 'dismissed', 'alice')", sid, flag)
    assert await node.directory.claim(sid, node.node_id, kept_flags=1)
    latest = dict(await db.fetch(
        "SELECT DISTINCT ON (flag_index) flag_index, decision FROM interview_review_decisions"
        " WHERE session_id = $1 ORDER BY flag_index, decision_id DESC", sid))
    assert latest == {0: "dismissed", 1: "open", 2: "open"}
    voided = await db.fetch("SELECT decided_by, note FROM interview_review_decisions"
                            " WHERE session_id = $1 AND decision = 'open'", sid)
    assert {r["decided_by"] for r in voided} == {"system"}
    assert all("lost" in r["note"] for r in voided)
    assert await db.fetchval("SELECT count(*) FROM interview_review_decisions"
                             " WHERE session_id = $1", sid) == 5  # nothing deleted
