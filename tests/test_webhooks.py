"""Webhooks against a local receiver: signatures, retries, restarts, metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from engine.registry import InterviewTable
from engine.session import InterviewSession, SessionRow
from storage.outbox import Outbox
from storage.pg import SessionStore
from storage.webhooks import (
    REVIEW_DECIDED, RetryPolicy, WebhookSender, ended_event_id, sign, verify,
)
from storage.writer import SessionWriter
from testing import start_server
from tests.conftest import REPO, AppFactory
from tests.test_interview_table import Rows, SlowCall

SECRET = "whsec-test"
FAST = RetryPolicy(first_s=0.05, max_s=0.2)


class Receiver:
    """A webhook receiver on loopback: verifies each request, records what it took."""

    def __init__(self, port: int = 0, *, status: int = 200) -> None:
        self.port = port
        self.status = status  # what it answers a well-signed request
        self.delivered: list[dict[str, Any]] = []  # bodies answered 2xx
        self.attempts = 0
        self.bad_signatures = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def wait_delivered(self, count: int, timeout_s: float = 20) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.delivered) >= count), timeout_s)

    async def wait_attempts(self, count: int, timeout_s: float = 20) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.attempts >= count),
                                   timeout_s)

    def ids(self) -> list[str]:
        return [event["id"] for event in self.delivered]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._changed:
            self.attempts += 1
            self._changed.notify_all()
        if not verify(SECRET, request.headers.get("X-Signature", ""), body):
            self.bad_signatures += 1
            return web.Response(status=401)
        event = json.loads(body)
        assert request.headers["X-Webhook-Id"] == event["id"]
        assert request.headers["X-Webhook-Event"] == event["type"]
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"].startswith("interview-media-server")
        if not 200 <= self.status < 300:
            return web.Response(status=self.status)
        async with self._changed:
            self.delivered.append(event)
            self._changed.notify_all()
        return web.Response(status=self.status)


@asynccontextmanager
async def receiving(port: int = 0, *, status: int = 200) -> AsyncIterator[Receiver]:
    receiver = Receiver(port, status=status)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def free_port() -> int:
    """A loopback port nothing listens on (a receiver that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the signature -------------------------------------------------------------------


def test_signature_round_trip_and_what_breaks_it():
    body = b'{"id":"x","type":"interview.ended"}'
    now = int(time.time())
    header = sign(SECRET, now, body)
    assert header.startswith(f"t={now},v1=") and len(header.rpartition("v1=")[2]) == 64
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, body + b" ")  # tampered body
    assert not verify("other", header, body)  # another secret
    old = sign(SECRET, now - 301, body)
    assert not verify(SECRET, old, body)  # a replay, too old
    assert not verify(SECRET, f"t={now},v1=\u00e9\u00e9", body)  # not hex, not even ASCII
    assert not verify(SECRET, f"t={now},v1=\udcff", body)  # undecodable header bytes
    assert verify(SECRET, old, body, tolerance_s=600)
    assert not verify(SECRET, header, body, now=now + 400)
    for broken in ("", "t=abc,v1=00", f"v1={header.rpartition('v1=')[2]}", f"t={now}"):
        assert not verify(SECRET, broken, body)
    # A secret being rotated: either signature may match.
    assert verify(SECRET, f"{sign('old', now, body)},v1={header.rpartition('v1=')[2]}", body)


def test_the_readme_snippet_verifies_the_same_way():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Webhooks", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    readme_verify = namespace["verify"]
    body = b'{"id":"e1"}'
    now = int(time.time())
    good = sign(SECRET, now, body)
    cases = [(good, body), (good, body + b"x"), (sign(SECRET, now - 400, body), body),
             ("t=x,v1=00", body), ("", body), (f"{sign('old', now, body)},{good}", body)]
    for header, received in cases:
        assert readme_verify(SECRET, header, received) == verify(SECRET, header, received)
    assert readme_verify(SECRET, good, body)


# -- the sender ----------------------------------------------------------------------


@asynccontextmanager
async def sender(directory: Path, url: str, policy: RetryPolicy = FAST
                 ) -> AsyncIterator[WebhookSender]:
    webhooks = WebhookSender(url, SECRET, directory, policy=policy)
    await webhooks.start()
    try:
        yield webhooks
    finally:
        await webhooks.close()


async def test_retried_until_the_receiver_answers_then_delivered_once(tmp_path: Path):
    directory = tmp_path / "webhooks"
    async with receiving(status=503) as receiver, sender(directory, receiver.url) as webhooks:
        data = {"session_id": str(uuid.uuid4()), "decision": "advance"}
        await webhooks.emit(REVIEW_DECIDED, data, event_id="review-1")
        assert [p.name for p in directory.glob("*.json")] == ["review-1.json"]  # stored
        await webhooks.emit(REVIEW_DECIDED, data, event_id="review-1")  # a repeat
        await receiver.wait_attempts(3)  # refused, retried with backoff
        assert webhooks.pending == 1 and webhooks.failed >= 2 and webhooks.delivered == 0
        receiver.status = 200
        await receiver.wait_delivered(1)
        await webhooks.emit(REVIEW_DECIDED, data, event_id="review-1")  # delivered already
        await webhooks.emit(REVIEW_DECIDED, data, event_id="review-2")
        await receiver.wait_delivered(2)
        await asyncio.sleep(0.3)  # time for a wrong third delivery
    assert receiver.ids() == ["review-1", "review-2"] and receiver.bad_signatures == 0
    first = receiver.delivered[0]
    assert first["type"] == "review.decided" and first["data"] == data
    assert first["created_at"].endswith("+00:00")
    assert webhooks.delivered == 2 and webhooks.pending == 0
    assert list(directory.glob("*.json")) == []  # delivered: the files are gone


async def test_one_failing_event_does_not_hold_up_the_others(tmp_path: Path):
    """Each event has its own schedule: a receiver refusing one takes the next."""
    refused = {"stuck"}

    async def handle(request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        return web.Response(status=400 if event["id"] in refused else 204)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with sender(tmp_path, url) as webhooks:
            await webhooks.emit("review.decided", {}, event_id="stuck")
            await webhooks.emit("review.decided", {}, event_id="fine")
            for _ in range(100):
                if webhooks.delivered:
                    break
                await asyncio.sleep(0.05)
            assert webhooks.delivered == 1 and webhooks.pending == 1
            assert [p.stem for p in tmp_path.glob("*.json")] == ["stuck"]
    finally:
        await runner.cleanup()


async def test_given_up_after_the_age_limit_and_kept(tmp_path: Path):
    policy = RetryPolicy(first_s=0.05, max_s=0.1, give_up_after_s=0.0)
    async with sender(tmp_path, f"http://127.0.0.1:{free_port()}/", policy) as webhooks:
        await webhooks.emit("interview.ended", {"status": "completed"}, event_id="old")
        for _ in range(100):
            if webhooks.given_up:
                break
            await asyncio.sleep(0.05)
        assert webhooks.given_up == 1 and webhooks.pending == 0 and webhooks.failed == 1
        assert [p.name for p in (tmp_path / "failed").iterdir()] == ["old.json"]
        await webhooks.emit("interview.ended", {}, event_id="old")  # not stored again
        assert webhooks.pending == 0


async def test_bad_ids_and_no_url(tmp_path: Path):
    async with sender(tmp_path, "http://127.0.0.1:9/") as webhooks:
        for bad in ("", "../x", ".hidden", "a/b", "x" * 200):
            with pytest.raises(ValueError):
                await webhooks.emit("review.decided", {}, event_id=bad)
    off = WebhookSender(None, "", tmp_path / "off")
    await off.start()
    await off.emit("review.decided", {}, event_id="nothing")  # no WEBHOOK_URL: nothing
    await off.close()
    assert not off.enabled and not (tmp_path / "off").exists()


# -- the interview table's endings ---------------------------------------------------


async def test_the_table_reports_an_interview_once_it_is_over_for_good():
    rows, ended = Rows(), []

    async def on_ended(row: SessionRow) -> None:
        await asyncio.sleep(0.05)  # shutdown must wait for this
        ended.append((row.session_id, row.status))

    interviews = InterviewTable(rows, checkpoint_s=0.05, heartbeat_s=3600.0,
                                rejoin_grace_s=0.6, on_ended=on_ended, invite_ttl_s=0.01)
    await interviews.start()
    dropped, rejoined, live = (InterviewSession(job_role=r) for r in ("A", "B", "C"))
    for session in (dropped, rejoined, live):
        await interviews.add(session)
        interviews.interview(session.session_id).attach(SlowCall())  # type: ignore[union-attr]
        interviews.end_soon(session.session_id, rejoinable=session is not live)
    unused = InterviewSession(job_role="D")
    await interviews.add(unused)  # expires unused (the checkpointer): no interview, no event
    await asyncio.sleep(0.3)
    assert [sid for sid, _ in ended] == [live.session_id]  # the others are parked
    assert interviews.rejoin(rejoined.session_id) is rejoined
    await asyncio.sleep(0.6)  # the dropped one's window closes
    assert ended[1:] == [(dropped.session_id, "completed")]
    interviews.interview(rejoined.session_id).attach(SlowCall())  # type: ignore[union-attr]
    assert interviews.interview(unused.session_id) is None
    await interviews.end_all()  # waits for the report of the rejoined one
    await interviews.close()
    assert ended[2:] == [(rejoined.session_id, "completed")]
    assert rows.rows[-1].status == "completed"
    assert any(r.session_id == unused.session_id and r.status == "expired" for r in rows.rows)


# -- in the app ----------------------------------------------------------------------


def hooked(receiver: Receiver) -> dict[str, Any]:
    return {"webhook_url": receiver.url, "webhook_secret": SECRET, "webhook_retry_max_s": 0.2}


async def test_an_ended_interview_posts_one_signed_event(make_client: AppFactory):
    async with receiving() as receiver:
        client = await make_client(**hooked(receiver))
        created = await (await client.post("/sessions", json={"job_role": "Backend"})).json()
        sid = created["session_id"]
        assert (await client.post(f"/sessions/{sid}/end")).status == 200
        await receiver.wait_delivered(1)
        await asyncio.sleep(0.3)  # time for a wrong second delivery
        metrics = await (await client.get("/metrics")).text()
        row = await (await client.get(f"/sessions/{sid}")).json()
    [event] = receiver.delivered
    run = row["session_information"]["server_run"]
    assert run and event["id"] == ended_event_id(uuid.UUID(sid), "completed", run)
    assert event["type"] == "interview.ended"
    data = event["data"]
    assert data["session_id"] == sid and data["status"] == "completed"
    assert data["job_role"] == "Backend" and data["anomalies"] == 0
    assert data["end_time"] is not None and data["start_time"] is not None
    assert set(data) == {"session_id", "status", "start_time", "end_time", "job_role",
                         "anomalies", "recording_url"}
    assert 'interview_webhook_attempts_total{outcome="delivered"} 1.0' in metrics
    assert "interview_webhook_pending 0.0" in metrics
    assert "interview_webhook_given_up_total 0.0" in metrics


async def test_rows_the_sweep_marks_interrupted_are_reported(
    make_client: AppFactory, database_url: str
):
    """A row another process left `in_progress`, its checkpoint long past."""
    store = SessionStore(database_url)
    await store.open()  # creates the schema
    await store.close()
    sid = uuid.uuid4()
    info = {"job_role": "SRE", "server_instance": "elsewhere", "server_run": "r",
            "checkpoint_at": "2020-01-01T00:00:00+00:00", "anomalies_detected": [{}, {}]}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO interview_sessions (session_id, status, start_time, session_information)"
            " VALUES ($1, 'in_progress', now(), $2::jsonb)", sid, json.dumps(info))
        async with receiving() as receiver:
            await make_client(**hooked(receiver))
            await receiver.wait_delivered(1)
        status = await conn.fetchval(
            "SELECT status FROM interview_sessions WHERE session_id = $1", sid)
    finally:
        await conn.close()
    assert status == "interrupted"
    [event] = receiver.delivered
    assert event["data"]["session_id"] == str(sid) and event["data"]["status"] == "interrupted"
    assert event["data"]["job_role"] == "SRE" and event["data"]["anomalies"] == 2


async def test_the_sweep_is_undone_when_its_events_cannot_be_stored(database_url: str):
    store = SessionStore(database_url)
    await store.open()
    try:
        conn = await asyncpg.connect(database_url)
        sid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO interview_sessions (session_id, status, session_information) VALUES "
            "($1, 'in_progress', '{\"checkpoint_at\": \"2020-01-01T00:00:00+00:00\"}')", sid)

        async def full_disk(rows: list[Any]) -> None:
            assert [row.session_id for row in rows] == [sid]
            raise RuntimeError("no room for the events")

        with pytest.raises(RuntimeError):
            await store.mark_interrupted("me", "run", 60, before_commit=full_disk)
        query = "SELECT status FROM interview_sessions WHERE session_id = $1"
        assert await conn.fetchval(query, sid) == "in_progress"  # for the next sweep
        assert await store.mark_interrupted("me", "run", 60) == 1
        assert await conn.fetchval(query, sid) == "interrupted"
        await conn.close()
    finally:
        await store.close()


async def test_the_sweeps_events_go_out_only_once_it_committed(tmp_path: Path, database_url: str):
    """A receiver that reads the row when the event comes finds it `interrupted`."""
    store = SessionStore(database_url)
    await store.open()
    conn = await asyncpg.connect(database_url)
    sid = uuid.uuid4()
    query = "SELECT status FROM interview_sessions WHERE session_id = $1"
    seen_in_transaction: list[int] = []
    try:
        await conn.execute(
            "INSERT INTO interview_sessions (session_id, status, session_information) VALUES "
            "($1, 'in_progress', '{\"checkpoint_at\": \"2020-01-01T00:00:00+00:00\"}')", sid)
        async with receiving() as receiver, sender(tmp_path / "hooks", receiver.url) as webhooks:

            async def stored_then_wait(rows: list[SessionRow]) -> None:
                await webhooks.hold_all_ended(rows)
                await asyncio.sleep(0.5)  # the sender had time to deliver a wrong one
                seen_in_transaction.append(receiver.attempts)

            marked = await store.mark_interrupted(
                "me", "run", 60, before_commit=stored_then_wait,
                after_commit=webhooks.release_all_ended)
            await receiver.wait_delivered(1)
            status = await conn.fetchval(query, sid)
    finally:
        await conn.close()
        await store.close()
    assert marked == 1 and seen_in_transaction == [0] and status == "interrupted"
    (event,) = receiver.delivered
    assert event["type"] == "interview.ended" and event["data"]["status"] == "interrupted"


async def test_outbox_rows_left_in_progress_are_reported_interrupted(
    tmp_path: Path, database_url: str
):
    """A crash while the database was down: the row waited in the outbox."""
    outbox = Outbox(tmp_path / "outbox")
    row = SessionRow(uuid.uuid4(), "in_progress", session_information={"job_role": "QA"})
    outbox.put(row)
    reported: list[SessionRow] = []
    saved: list[SessionRow] = []
    written: list[uuid.UUID] = []

    class Store(SessionStore):
        async def upsert(self, row: SessionRow) -> Any:
            result = await super().upsert(row)
            written.append(row.session_id)
            return result

    async def on_interrupted(rows: list[SessionRow]) -> None:
        reported.extend(rows)
        assert not written  # told first, while the row is not in the database yet

    def on_interrupted_saved(rows: list[SessionRow]) -> None:
        assert written == [row.session_id]  # ... and again once it is
        saved.extend(rows)

    store = Store(database_url)
    await store.open()
    writer = SessionWriter(store, outbox, server_instance="i", server_run="r2",
                           stale_after_s=60, on_interrupted=on_interrupted,
                           on_interrupted_saved=on_interrupted_saved)
    await writer.start()
    await writer.wait_idle()
    await writer.close()
    status = await store_status(database_url, row.session_id)
    await store.close()
    assert [(r.session_id, r.status) for r in reported] == [(row.session_id, "interrupted")]
    # ... and once the row is in the database: its event may go out.
    assert [r.session_id for r in saved] == [row.session_id] and status == "interrupted"


async def store_status(database_url: str, session_id: uuid.UUID) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT status FROM interview_sessions WHERE session_id = $1", session_id)
    finally:
        await conn.close()


# -- across a restart, receiver down -------------------------------------------------


async def metric(http: aiohttp.ClientSession, url: str, line_start: str) -> float:
    text = await (await http.get(f"{url}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in /metrics")


async def test_an_event_arrives_once_after_the_receiver_was_down_across_a_restart(
    tmp_path: Path, database_url: str
):
    """Two interviews end while the receiver is down; the server is killed and
    started again; the receiver comes back: each event arrives, once."""
    port = free_port()  # the receiver's, closed for now
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url,
           "WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks", "WEBHOOK_SECRET": SECRET,
           "WEBHOOK_RETRY_MAX_S": "0.3", "INTERVIEWER": "0", "RECORDING": "0"}
    failed = 'interview_webhook_attempts_total{outcome="failed"}'
    async with start_server(env) as server, aiohttp.ClientSession() as http:
        sids = []
        for role in ("QA", "SRE"):
            async with http.post(f"{server.url}/sessions", json={"job_role": role}) as resp:
                sids.append((await resp.json())["session_id"])
            async with http.post(f"{server.url}/sessions/{sids[-1]}/end") as resp:
                assert resp.status == 200
        # Stored before the end was answered: a crash now loses nothing.
        assert await metric(http, server.url, "interview_webhook_pending") == 2
        server.process.kill()
        await server.process.wait()
    assert len(list((tmp_path / "data" / "webhooks").glob("*.json"))) == 2
    async with start_server(env) as server, aiohttp.ClientSession() as http:
        for _ in range(100):  # the receiver is still down: attempts fail
            if await metric(http, server.url, failed) >= 3:
                break
            await asyncio.sleep(0.1)
        assert await metric(http, server.url, failed) >= 3
        assert await metric(http, server.url, "interview_webhook_pending") == 2
        async with receiving(port) as receiver:
            await receiver.wait_delivered(2)
            for _ in range(100):
                if await metric(http, server.url, "interview_webhook_pending") == 0:
                    break
                await asyncio.sleep(0.1)
            delivered = 'interview_webhook_attempts_total{outcome="delivered"}'
            assert await metric(http, server.url, delivered) == 2
            await asyncio.sleep(1.0)  # time for a wrong second delivery
            runs = {}
            for sid in sids:
                async with http.get(f"{server.url}/sessions/{sid}") as resp:
                    runs[sid] = (await resp.json())["session_information"]["server_run"]
    # The first process's run ended them; the id does not change with the restart.
    expected = {ended_event_id(uuid.UUID(sid), "completed", runs[sid]) for sid in sids}
    assert sorted(receiver.ids()) == sorted(expected)  # each id delivered once
    assert {e["data"]["session_id"] for e in receiver.delivered} == set(sids)
    assert receiver.bad_signatures == 0
    assert list((tmp_path / "data" / "webhooks").glob("*.json")) == []
