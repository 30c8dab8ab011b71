"""The reviewer's API against a real PostgreSQL: review tokens, decisions on
flags and on the interview, the audit log, the sessions list (issue 14)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from engine.review import ReviewScope, ReviewTokens
from engine.session import InterviewSession, SessionClock
from tests.conftest import AppFactory

KEY = {"Authorization": "Bearer k3y"}
ANOMALIES = [
    {"timestamp": "2026-12-01 10:00:05", "type": "multiple_persons", "count": 2,
     "detections": [], "evidence_url": "/sessions/x/evidence/a.jpg", "offset_s": 5.2},
    {"timestamp": "2026-12-01 10:00:40", "type": "devices_detected", "count": 1,
     "detections": [], "evidence_url": "/sessions/x/evidence/b.jpg", "offset_s": 40.0},
]
HISTORY = [
    {"role": "assistant", "content": "Tell me about a migration.", "offset_s": 0.4,
     "end_offset_s": 3.0},
    {"role": "user", "content": "We moved billing to PostgreSQL.", "offset_s": 4.1,
     "end_offset_s": 9.8},
]


async def _ended_row(db: asyncpg.Connection, *, start: datetime, status: str = "completed",
                     anomalies: list[dict[str, Any]] = ANOMALIES) -> uuid.UUID:
    session_id = uuid.uuid4()
    info = {"job_role": "Backend engineer", "conversation_history": HISTORY,
            "anomalies_detected": anomalies}
    await db.execute(
        "INSERT INTO interview_sessions (session_id, start_time, end_time, status, "
        "session_information) VALUES ($1, $2, $3, $4, $5::jsonb)",
        session_id, start, start + timedelta(minutes=12), status, json.dumps(info))
    return session_id


async def _token(client: Any, sid: uuid.UUID, **body: str) -> str:
    resp = await client.post(f"/sessions/{sid}/review-tokens", json=body, headers=KEY)
    assert resp.status == 201, await resp.text()
    minted = await resp.json()
    assert parse_qs(urlsplit(minted["review_url"]).query)["token"] == [minted["token"]]
    return str(minted["token"])


def test_review_tokens_are_bound_to_their_session_and_scope():
    tokens = ReviewTokens(b"s" * 32)
    sid, other = uuid.uuid4(), uuid.uuid4()
    read = tokens.mint(sid, ttl_s=60)
    decide = tokens.mint(sid, ReviewScope.DECIDE, "alice", ttl_s=60)
    assert tokens.check(sid, read) is not None and not tokens.check(sid, read).can_decide
    grant = tokens.check(sid, decide)
    assert grant is not None and grant.can_decide and grant.reviewer == "alice"
    assert tokens.check(other, decide) is None  # another session's
    assert ReviewTokens(b"t" * 32).check(sid, decide) is None  # another secret's
    payload, signature = decide.split(".")
    forged = tokens.mint(sid, ReviewScope.DECIDE, "mallory", ttl_s=60).split(".")[0]
    assert tokens.check(sid, f"{forged}.{signature}") is None  # a payload swapped in
    for junk in ("", ".", "a.b.c", "\udcff.x", payload):
        assert tokens.check(sid, junk) is None


def test_review_tokens_expire():
    tokens = ReviewTokens(b"s" * 32)
    sid = uuid.uuid4()
    token = tokens.mint(sid, ReviewScope.DECIDE, "alice", ttl_s=3600, now=1_000_000)
    grant = tokens.check(sid, token, now=1_000_000 + 3599)
    assert grant is not None and grant.expires_at == 1_000_000 + 3600
    assert tokens.check(sid, token, now=1_000_000 + 3600) is None  # expired
    # A token signed without an expiry (as none is minted) is refused too.
    legacy = base64.urlsafe_b64encode(b'["decide","alice"]').decode().rstrip("=")
    assert tokens.check(sid, f"{legacy}.{tokens._sign(sid, legacy)}") is None


def test_offsets_share_the_recordings_clock():
    session = InterviewSession(job_role="x", clock=SessionClock(origin=100.0))
    session.add_turn("assistant", "Hello.", at=100.5, until=102.25)
    session.add_turn("user", "Hi.", at=103.0)
    session.add_turn("user", "No time known.")
    session.add_anomaly({"type": "no_person"}, at=110.125)
    history = session.session_information()["conversation_history"]
    assert history[0] == {"role": "assistant", "content": "Hello.", "offset_s": 0.5,
                          "end_offset_s": 2.25}
    assert history[1] == {"role": "user", "content": "Hi.", "offset_s": 3.0}
    assert history[2] == {"role": "user", "content": "No time known."}  # the seed's shape
    assert session.anomalies_detected[0]["offset_s"] == 10.125
    # A clock nothing started yet starts at the first stamp.
    fresh = InterviewSession(job_role="x")
    fresh.add_turn("assistant", "Hi.", at=50.0)
    assert fresh.conversation_history[0].offset_s == 0.0 and fresh.clock.origin == 50.0


async def test_a_review_link_reads_but_does_not_decide(make_client: AppFactory,
                                                       db: asyncpg.Connection):
    client = await make_client(api_key="k3y")
    created = await client.post("/sessions", json={"job_role": "Backend engineer"}, headers=KEY)
    body = await created.json()
    sid = body["session_id"]
    link = urlsplit(body["review_url"])
    assert link.path == f"/review/{sid}"
    token = parse_qs(link.query)["token"][0]
    assert token != body["token"]  # not the candidate's

    page = await client.get(link.path)
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]

    review = await client.get(f"/sessions/{sid}/review", params={"token": token})
    assert review.status == 200, await review.text()
    data = await review.json()
    assert data["live"] is True and data["status"] == "scheduled"
    assert data["you"] == {"reviewer": "review link", "can_decide": False}
    assert data["review"]["status"] == "unreviewed"

    refused = await client.put(f"/sessions/{sid}/review", json={"status": "cleared"},
                               headers={"Authorization": f"Bearer {token}"})
    assert refused.status == 403 and "error" in await refused.json()
    # The candidate's token is not a review token, nor is another session's.
    for wrong in (body["token"], "nope", await _other_sessions_token(client)):
        resp = await client.get(f"/sessions/{sid}/review", params={"token": wrong})
        assert resp.status == 401, wrong
    # Nor does a review token open management routes.
    resp = await client.get(f"/sessions/{sid}", params={"token": token})
    assert resp.status == 401

    # The page's media token reads, for half a day, and never decides.
    media = data["media_token"]
    assert media != token
    again = await client.get(f"/sessions/{sid}/review", params={"token": media})
    assert again.status == 200
    refused = await client.put(f"/sessions/{sid}/review", json={"status": "cleared"},
                               headers={"Authorization": f"Bearer {media}"})
    assert refused.status == 403


async def test_a_minted_token_expires_when_asked(make_client: AppFactory,
                                                 db: asyncpg.Connection):
    client = await make_client(api_key="k3y", review_token_ttl_s=3600.0)
    sid = await _ended_row(db, start=datetime.now(timezone.utc) - timedelta(hours=1))
    resp = await client.post(f"/sessions/{sid}/review-tokens", headers=KEY,
                             json={"scope": "decide", "ttl_s": 120})
    assert resp.status == 201
    minted = await resp.json()
    left = (datetime.fromisoformat(minted["expires_at"]) - datetime.now(timezone.utc))
    assert 100 < left.total_seconds() <= 120
    default = await (await client.post(f"/sessions/{sid}/review-tokens", headers=KEY,
                                       json={})).json()
    left = (datetime.fromisoformat(default["expires_at"]) - datetime.now(timezone.utc))
    assert 3500 < left.total_seconds() <= 3600  # REVIEW_TOKEN_TTL_S
    # The review's media token never outlives the token that asked for it.
    short = {"Authorization": f"Bearer {minted['token']}"}
    review = await (await client.get(f"/sessions/{sid}/review", headers=short)).json()
    payload = review["media_token"].split(".")[0]
    scope, _, media_expiry = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert scope == "read"
    assert media_expiry <= datetime.fromisoformat(minted["expires_at"]).timestamp()
    for bad in (0, 59, 10**9, "60", True, None):
        resp = await client.post(f"/sessions/{sid}/review-tokens", headers=KEY,
                                 json={"ttl_s": bad})
        assert resp.status == 400 and "ttl_s" in (await resp.json())["error"], bad


async def _other_sessions_token(client: Any) -> str:
    created = await client.post("/sessions", json={"job_role": "Other"}, headers=KEY)
    return parse_qs(urlsplit((await created.json())["review_url"]).query)["token"][0]


async def test_decisions_are_stored_audited_and_listed(make_client: AppFactory,
                                                       db: asyncpg.Connection):
    client = await make_client(api_key="k3y")
    now = datetime.now(timezone.utc)
    sid = await _ended_row(db, start=now - timedelta(hours=1))
    quiet = await _ended_row(db, start=now - timedelta(days=3), status="interrupted",
                             anomalies=[])
    token = await _token(client, sid, scope="decide", reviewer="alice")
    auth = {"Authorization": f"Bearer {token}"}

    review = await (await client.get(f"/sessions/{sid}/review", headers=auth)).json()
    assert [line["offset_s"] for line in review["transcript"]] == [0.4, 4.1]
    assert [(f["flag"], f["type"], f["offset_s"]) for f in review["flags"]] == [
        (0, "multiple_persons", 5.2), (1, "devices_detected", 40.0)]
    assert review["duration_s"] == 720.0 and review["review"]["open_flags"] == 2

    resp = await client.put(f"/sessions/{sid}/flags/0", headers=auth,
                            json={"decision": "dismissed", "note": "a poster on the wall"})
    assert resp.status == 200, await resp.text()
    entry = await resp.json()
    assert entry["decided_by"] == "alice" and entry["flag"] == 0
    resp = await client.put(f"/sessions/{sid}/flags/1", headers=KEY,
                            json={"decision": "confirmed", "reviewer": "bob"})
    assert (await resp.json())["decided_by"] == "api-key: bob"
    resp = await client.put(f"/sessions/{sid}/review", headers=auth,
                            json={"status": "rejected", "note": "phone in use"})
    assert resp.status == 200

    for bad_path, bad_body, code in [
        ("flags/2", {"decision": "dismissed"}, 404),  # no such flag
        ("flags/x", {"decision": "dismissed"}, 400),
        ("flags/0", {"decision": "maybe"}, 400),
        ("flags/0", {"decision": "dismissed", "note": "n" * 3000}, 400),
        ("flags/0", {"decision": "dismissed", "extra": 1}, 400),
        ("review", {"status": "approved"}, 400),
    ]:
        resp = await client.put(f"/sessions/{sid}/{bad_path}", headers=auth, json=bad_body)
        assert resp.status == code, (bad_path, bad_body, await resp.text())
        assert "error" in await resp.json()
    missing = await client.put(f"/sessions/{uuid.uuid4()}/flags/0", headers=KEY,
                               json={"decision": "dismissed"})
    assert missing.status == 404

    review = await (await client.get(f"/sessions/{sid}/review", headers=auth)).json()
    assert review["flags"][0]["decision"]["decision"] == "dismissed"
    assert review["flags"][0]["decision"]["note"] == "a poster on the wall"
    assert review["flags"][1]["decision"]["decision"] == "confirmed"
    assert review["review"]["status"] == "rejected" and review["review"]["open_flags"] == 0
    assert [h["decided_by"] for h in review["review"]["history"]] == [
        "alice", "api-key: bob", "alice"]  # newest first
    rows = await db.fetch("SELECT * FROM interview_review_decisions WHERE session_id = $1",
                          sid)
    assert len(rows) == 3 and all(r["decided_at"] is not None for r in rows)

    listed = await (await client.get("/sessions", headers=KEY)).json()
    by_id = {s["session_id"]: s for s in listed["sessions"]}
    assert by_id[str(sid)]["review_status"] == "rejected"
    assert by_id[str(sid)]["open_flags"] == 0 and by_id[str(sid)]["flags"] == 2
    assert by_id[str(quiet)]["review_status"] == "unreviewed"
    assert [s["session_id"] for s in listed["sessions"]][:2] == [str(sid), str(quiet)]
    only = await (await client.get("/sessions", headers=KEY,
                                   params={"status": "interrupted"})).json()
    assert [s["session_id"] for s in only["sessions"]] == [str(quiet)]
    since = (now - timedelta(days=1)).isoformat()
    recent = await (await client.get("/sessions", headers=KEY, params={"since": since})).json()
    assert str(quiet) not in {s["session_id"] for s in recent["sessions"]}
    rejected = await (await client.get("/sessions", headers=KEY,
                                       params={"review_status": "rejected"})).json()
    assert [s["session_id"] for s in rejected["sessions"]] == [str(sid)]
    for params in ({"status": "odd"}, {"limit": "0"}, {"since": "yesterday"},
                   {"since": "2026-12-01T00:00"}, {"colour": "red"}, {"after": "x"},
                   {"after": "2026-12-01T00:00~" + str(sid)}):
        resp = await client.get("/sessions", headers=KEY, params=params)
        assert resp.status == 400, params
    assert (await client.get("/sessions", params={"token": token})).status == 401

    # The seed's row deleted: its decisions go with it (ON DELETE CASCADE).
    await db.execute("DELETE FROM interview_sessions WHERE session_id = $1", sid)
    assert await db.fetchval(
        "SELECT count(*) FROM interview_review_decisions WHERE session_id = $1", sid) == 0


@pytest.mark.parametrize("scope", ["read", "decide"])
async def test_review_tokens_survive_a_restart(make_client: AppFactory, db: asyncpg.Connection,
                                               scope: str):
    """The key is in the database, so a link minted before a restart still opens."""
    first = await make_client(api_key="k3y")
    sid = await _ended_row(db, start=datetime.now(timezone.utc))
    token = await _token(first, sid, scope=scope)
    await first.close()
    second = await make_client(api_key="k3y")
    resp = await second.get(f"/sessions/{sid}/review", params={"token": token})
    assert resp.status == 200
    assert (await resp.json())["you"]["can_decide"] is (scope == "decide")


async def test_a_decided_review_is_announced_by_webhook(make_client: AppFactory,
                                                        db: asyncpg.Connection):
    from tests.test_webhooks import receiving

    async with receiving() as receiver:
        client = await make_client(api_key="k3y", **hooks(receiver.url))
        sid = await _ended_row(db, start=datetime.now(timezone.utc))
        await client.put(f"/sessions/{sid}/flags/0", headers=KEY, json={"decision": "confirmed"})
        for status in ("in_review", "rejected"):  # only a decision is announced
            resp = await client.put(f"/sessions/{sid}/review", headers=KEY,
                                    json={"status": status, "note": "phone", "reviewer": "eve"})
            assert resp.status == 200
        await receiver.wait_delivered(1)
        await asyncio.sleep(0.3)  # and nothing else follows
        events = [e for e in receiver.delivered if e["type"] == "review.decided"]
        assert len(events) == 1 and receiver.bad_signatures == 0
        data = events[0]["data"]
        assert data["session_id"] == str(sid) and data["review_status"] == "rejected"
        assert data["decided_by"] == "api-key: eve" and data["note"] == "phone"
        assert data["open_flags"] == 1  # flag 1 was never decided
        assert data["flags"][0]["decision"] == "confirmed" and data["flags"][1] is None


def hooks(url: str) -> dict[str, Any]:
    from tests.test_webhooks import SECRET

    return {"webhook_url": url, "webhook_secret": SECRET, "webhook_retry_max_s": 0.2}


async def test_the_decision_log_of_a_session_is_bounded(make_client: AppFactory,
                                                        db: asyncpg.Connection):
    from storage.pg import MAX_DECISIONS

    client = await make_client(api_key="k3y")
    sid = await _ended_row(db, start=datetime.now(timezone.utc) - timedelta(hours=1))
    await db.executemany(
        "INSERT INTO interview_review_decisions (session_id, flag_index, decision, decided_by)"
        " VALUES ($1, NULL, 'in_review', 'x')", [(sid,)] * (MAX_DECISIONS - 1))
    token = {"Authorization": f"Bearer {await _token(client, sid, scope='decide')}"}
    last = await client.put(f"/sessions/{sid}/review", json={"status": "cleared"}, headers=token)
    assert last.status == 200, await last.text()  # the last one that fits
    refused = await client.put(f"/sessions/{sid}/flags/0", json={"decision": "dismissed"},
                               headers=token)
    assert refused.status == 409 and "full" in (await refused.json())["error"]
    count = await db.fetchval(
        "SELECT count(*) FROM interview_review_decisions WHERE session_id = $1", sid)
    assert count == MAX_DECISIONS
    review = await (await client.get(f"/sessions/{sid}/review", headers=KEY)).json()
    assert review["review"]["status"] == "cleared"  # what was logged stays
    # The API key holder is not locked out by a full log.
    by_key = await client.put(f"/sessions/{sid}/flags/0", json={"decision": "dismissed"},
                              headers=KEY)
    assert by_key.status == 200


async def test_the_sessions_list_pages_without_repeating_or_skipping(
    make_client: AppFactory, db: asyncpg.Connection
):
    client = await make_client(api_key="k3y")
    start = datetime.now(timezone.utc) - timedelta(days=2)
    # Ties on start_time, invitations (started at their creation), and rows
    # written without a start time (they come last).
    ids = [await _ended_row(db, start=start + timedelta(minutes=i // 3)) for i in range(7)]
    for _ in range(2):
        created = await client.post("/sessions", json={"job_role": "QA"}, headers=KEY)
        ids.append(uuid.UUID((await created.json())["session_id"]))
    for _ in range(3):
        ids.append(uuid.uuid4())
        await db.execute("INSERT INTO interview_sessions (session_id, status) "
                         "VALUES ($1, 'interrupted')", ids[-1])
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": "3", **({"after": after} if after else {})}
        page = await (await client.get("/sessions", headers=KEY, params=params)).json()
        seen += [s["session_id"] for s in page["sessions"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
        assert len(page["sessions"]) == 3
    assert pages == 4 and len(seen) == len(set(seen)) == 12
    assert set(seen) == {str(i) for i in ids}
    whole = await (await client.get("/sessions", headers=KEY, params={"limit": "50"})).json()
    assert [s["session_id"] for s in whole["sessions"]] == seen and whole["next"] is None
    assert [s["start_time"] is None for s in whole["sessions"]] == [False] * 9 + [True] * 3
