"""Nothing lost: the database goes away mid-interview and comes back."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from api.keys import REGISTRY, WRITER
from config import Config
from server import make_app
from testing import start_database


async def start_app(dsn: str, data_dir: Path, **overrides: Any) -> TestClient:
    config = Config(database_url=dsn, data_dir=data_dir, checkpoint_s=0.2, **overrides)
    client = TestClient(TestServer(make_app(config), host="127.0.0.1", port=0))
    await client.start_server()
    return client


async def status_of(dsn: str, session_id: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT status FROM interview_sessions WHERE session_id = $1", uuid.UUID(session_id)
        )
    finally:
        await conn.close()


async def test_rows_survive_a_database_outage(tmp_path: Path, loop_errors: list[Any]):
    pgdata = tmp_path / "pg"
    cluster = await asyncio.to_thread(start_database, pgdata)
    dsn = cluster.dsn
    client = await start_app(dsn, tmp_path / "data")
    try:
        live = (await (await client.post("/sessions", json={"job_role": "QA"})).json())["session_id"]
        ended = (await (await client.post("/sessions", json={"job_role": "SRE"})).json())["session_id"]
        assert await status_of(dsn, live) == "scheduled"

        await asyncio.to_thread(cluster.stop)  # the database goes down

        saved = await (await client.post(f"/sessions/{live}/save")).json()
        assert saved["status"] == "queued"
        resp = await client.post(f"/sessions/{ended}/end")
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "ended" and body["saved"] == "queued"
        resp = await client.delete(f"/sessions/{live}")
        assert resp.status == 200 and (await resp.json())["saved"] == "queued"
        # Durable: one fsync'd file per session, readable back through the API.
        outbox = sorted(p.stem for p in (tmp_path / "data" / "outbox").glob("*.json"))
        assert outbox == sorted([live, ended])
        stored = await (await client.get(f"/sessions/{ended}")).json()
        assert stored["status"] == "completed"
        health = await (await client.get("/healthz")).json()
        assert health["outbox"] == 2

        cluster = await asyncio.to_thread(start_database, pgdata)  # and comes back
        await asyncio.wait_for(client.server.app[WRITER].wait_idle(), 60)
        assert await status_of(dsn, live) == "completed"
        assert await status_of(dsn, ended) == "completed"
        assert not list((tmp_path / "data" / "outbox").glob("*.json"))
    finally:
        await client.close()
        await asyncio.to_thread(cluster.stop)


async def test_outbox_is_replayed_after_a_restart(tmp_path: Path, database_url: str,
                                                  loop_errors: list[Any]):
    data_dir = tmp_path / "data"
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"
    client = await start_app(unreachable, data_dir)
    try:
        resp = await client.post("/sessions", json={"job_role": "Designer"})
        assert resp.status == 201
        sid = (await resp.json())["session_id"]
        app = client.server.app
        session = app[REGISTRY].get(uuid.UUID(sid))
        session.start_time = session.created_at  # as a candidate's joining does
        session.add_turn("assistant", "Hello, I'm Serin.")
        assert (await (await client.post(f"/sessions/{sid}/save")).json())["status"] == "queued"
    finally:
        # A server stopped while the database is down: shutdown ends the
        # session, the final row can only go to the outbox.
        await client.close()
    row = json.loads((data_dir / "outbox" / f"{sid}.json").read_text())
    assert row["status"] == "completed"

    client = await start_app(database_url, data_dir)
    try:
        await asyncio.wait_for(client.server.app[WRITER].wait_idle(), 30)
        assert await status_of(database_url, sid) == "completed"
        stored = await (await client.get(f"/sessions/{sid}")).json()
        history = stored["session_information"]["conversation_history"]
        assert history == [{"role": "assistant", "content": "Hello, I'm Serin."}]
    finally:
        await client.close()


async def test_live_sessions_are_checkpointed(make_client: Any, db: asyncpg.Connection):
    client = await make_client(checkpoint_s=0.1)
    sid = (await (await client.post("/sessions", json={"job_role": "QA"})).json())["session_id"]
    session = client.server.app[REGISTRY].get(uuid.UUID(sid))
    session.add_turn("user", "I led the migration to PostgreSQL.")
    history: list[Any] = []
    for _ in range(100):  # the checkpointer runs every 0.1 s; allow a noisy machine 10 s
        raw = await db.fetchval(
            "SELECT session_information FROM interview_sessions WHERE session_id = $1",
            uuid.UUID(sid),
        )
        history = json.loads(raw)["conversation_history"]
        if history:
            break
        await asyncio.sleep(0.1)
    assert history == [{"role": "user", "content": "I led the migration to PostgreSQL."}]
    assert await db.fetchval("SELECT status FROM interview_sessions") == "scheduled"
