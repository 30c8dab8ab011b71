"""A row PostgreSQL refuses, or an outbox file that cannot be read, never blocks the rest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from engine.session import SessionRow
from storage.outbox import Outbox
from storage.pg import SessionStore
from storage.writer import SessionWriter
from testing import EmbeddedDatabase, start_database
from tests.test_process import server_process

INSTANCE = "instance-a"


class Cluster:
    """A PostgreSQL of the test's own, to stop and start for real."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server: EmbeddedDatabase | None = None

    @property
    def dsn(self) -> str:
        assert self.server is not None
        return self.server.dsn

    async def start(self) -> None:
        self.server = await asyncio.to_thread(start_database, self.root)

    async def stop(self) -> None:
        assert self.server is not None
        await asyncio.to_thread(self.server.stop)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path / "pg")
    await cluster.start()
    yield cluster
    await cluster.stop()


@asynccontextmanager
async def running_writer(dsn: str, outbox_dir: Path, **kwargs: Any) -> AsyncIterator[SessionWriter]:
    """A started writer on `dsn` (as `api.lifecycle` makes it), retrying fast."""
    store = SessionStore(dsn)
    await store.open()
    writer = SessionWriter(store, Outbox(outbox_dir), server_instance=INSTANCE,
                           server_run="run-2", stale_after_s=60.0, retry_min_s=0.05,
                           retry_max_s=0.2, **kwargs)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()
        await store.close()


def row(status: str = "completed", **fields: Any) -> SessionRow:
    info = {"server_instance": INSTANCE, "server_run": "run-1", "conversation_history": []}
    return SessionRow(session_id=uuid.uuid4(), status=status,
                      session_information=fields.pop("session_information", info), **fields)


async def stored(dsn: str) -> dict[uuid.UUID, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT session_id, status FROM interview_sessions")
        return {r["session_id"]: r["status"] for r in rows}
    finally:
        await conn.close()


# Content PostgreSQL (or asyncpg's encoder) refuses; each tried for real.
REFUSED = {
    "nul in jsonb": {"session_information": {"conversation_history": [{"content": "a\u0000b"}]}},
    "nul in text": {"recording_url": "/rec\u0000"},
    "lone surrogate in jsonb": {"session_information": {"note": "\ud800"}},
    "lone surrogate in text": {"resume_url": "/r\udc00"},
}


@pytest.mark.parametrize("content", REFUSED.values(), ids=REFUSED.keys())
async def test_a_refused_row_is_quarantined_not_queued(
    database_url: str, tmp_path: Path, content: dict[str, Any], loop_errors: list[Any]
):
    async with running_writer(database_url, tmp_path / "outbox") as writer:
        bad = row(**content)
        assert await writer.save(bad) == "quarantined"
        assert writer.rows_quarantined == 1 and writer.outbox_size == 0
        assert not list((tmp_path / "outbox").glob("*.json"))
        await asyncio.wait_for(writer.wait_idle(), 10)
        kept = json.loads((tmp_path / "outbox" / "quarantine" / f"{bad.session_id}.json").read_text())
        assert kept["error"] and kept["quarantined_at"]  # why, and when
        assert SessionRow.from_json(kept["row"]) == bad  # every character kept
        good = row()
        assert await writer.save(good) == "saved"
        assert await stored(database_url) == {good.session_id: "completed"}


async def test_a_refused_row_in_the_outbox_does_not_block_the_rows_behind_it(
    database_url: str, tmp_path: Path, loop_errors: list[Any]
):
    # A previous run left an interview `in_progress` in the database, and
    # three rows in the outbox, the oldest one refused by PostgreSQL.
    abandoned = row("in_progress")
    conn = await asyncpg.connect(database_url)
    async with running_writer(database_url, tmp_path / "scratch"):
        pass  # creates the schema
    await conn.execute(
        "INSERT INTO interview_sessions (session_id, status, session_information)"
        " VALUES ($1, 'in_progress', $2)", abandoned.session_id,
        json.dumps(abandoned.session_information))
    await conn.close()
    outbox = Outbox(tmp_path / "outbox")
    bad, first, second = row(recording_url="x\u0000"), row(), row("in_progress")
    for age, queued in enumerate((second, first, bad)):
        outbox.put(queued)
        path = outbox.directory / f"{queued.session_id}.json"
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 10 * (age + 1)))
    assert outbox.pending()[0] == bad.session_id
    quarantine = outbox.directory / "quarantine"

    async with running_writer(database_url, tmp_path / "outbox") as writer:
        await asyncio.wait_for(writer.wait_idle(), 20)
        assert await stored(database_url) == {
            first.session_id: "completed",
            second.session_id: "interrupted",  # recovered as this instance's own
            abandoned.session_id: "interrupted",  # the start-up sweep ran
        }
        assert writer.rows_quarantined == 1 and writer.outbox_size == 0
        assert (quarantine / f"{bad.session_id}.json").exists()
        assert not list(outbox.directory.glob("*.json"))


async def test_a_corrupt_outbox_file_is_quarantined_at_start_up(
    database_url: str, tmp_path: Path, loop_errors: list[Any]
):
    outbox = Outbox(tmp_path / "outbox")
    good = row("in_progress")
    outbox.put(good)
    corrupt = uuid.uuid4()
    (outbox.directory / f"{corrupt}.json").write_text("{")
    quarantine = outbox.directory / "quarantine"
    half = uuid.uuid4()
    (outbox.directory / f"{half}.json").write_text('{"status": "completed"}')  # no session_id

    async with running_writer(database_url, tmp_path / "outbox") as writer:
        await asyncio.wait_for(writer.wait_idle(), 20)
        assert await stored(database_url) == {good.session_id: "interrupted"}
        assert writer.rows_quarantined == 2
        moved = sorted(p.name for p in quarantine.iterdir())
        assert len(moved) == 4  # each file as it was, and a note saying why
        assert [n for n in moved if n.startswith(str(corrupt))][0].endswith(".corrupt")
        note = next(quarantine.glob(f"{corrupt}.*.corrupt.error")).read_text()
        assert "JSONDecodeError" in note
        assert next(quarantine.glob(f"{corrupt}.*.corrupt")).read_text() == "{"
        assert not list(outbox.directory.glob("*.json"))


async def test_a_corrupt_outbox_file_at_runtime_does_not_stop_the_writer(
    cluster: Cluster, tmp_path: Path, loop_errors: list[Any]
):
    dsn = cluster.dsn
    async with running_writer(dsn, tmp_path / "outbox") as writer:
        await asyncio.wait_for(writer.wait_idle(), 20)
        await cluster.stop()
        damaged, intact = row(), row()
        assert await writer.save(damaged) == "queued"
        assert await writer.save(intact) == "queued"
        (tmp_path / "outbox" / f"{damaged.session_id}.json").write_text("{")
        assert await writer.read_queued(damaged.session_id) is None

        await cluster.start()
        await asyncio.wait_for(writer.wait_idle(), 30)
        assert await stored(dsn) == {intact.session_id: "completed"}
        assert writer.rows_quarantined == 1
        assert len(list((tmp_path / "outbox" / "quarantine").glob("*.corrupt"))) == 1

        # The background task lives on: a second outage is replayed too.
        await cluster.stop()
        later = row()
        assert await writer.save(later) == "queued"
        await cluster.start()
        await asyncio.wait_for(writer.wait_idle(), 30)
        assert (await stored(dsn))[later.session_id] == "completed"


async def test_a_server_process_starts_and_serves_past_a_corrupt_outbox_file(
    database_url: str, tmp_path: Path
):
    data_dir = tmp_path / "data"
    outbox = Outbox(data_dir / "outbox")
    good = row()
    outbox.put(good)
    corrupt = uuid.uuid4()
    (outbox.directory / f"{corrupt}.json").write_text("{")
    env = {"DATA_DIR": str(data_dir), "DATABASE_URL": database_url}
    async with server_process(env) as (proc, url), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["outbox"] in (0, 1)
        async with http.post(f"{url}/sessions", json={"job_role": "QA"}) as resp:
            assert resp.status == 201
        async with http.get(f"{url}/sessions/{good.session_id}") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "completed"
        for _ in range(100):  # replayed in the background
            if good.session_id in await stored(database_url):
                break
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert (await stored(database_url))[good.session_id] == "completed"
    kept = sorted(p.name.split(".")[-1] for p in (outbox.directory / "quarantine").iterdir())
    assert kept == ["corrupt", "error"]
    assert not list(outbox.directory.glob("*.json"))


async def test_a_row_json_cannot_encode_is_quarantined_while_the_database_is_down(
    tmp_path: Path, loop_errors: list[Any]
):
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"
    async with running_writer(unreachable, tmp_path / "outbox") as writer:
        odd = row(session_information={"score": {1, 2}})  # a set: not JSON
        assert await writer.save(odd) == "quarantined"
        kept = json.loads((tmp_path / "outbox" / "quarantine" / f"{odd.session_id}.json").read_text())
        assert kept["row"]["session_information"] == {"score": "{1, 2}"}  # kept as text
        assert "TypeError" in kept["error"] and writer.outbox_size == 0
