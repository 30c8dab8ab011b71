"""The REST API against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pypdf import PdfWriter

from tests.conftest import AppFactory
from testing import Candidate


def pdf_bytes(pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def create(client: TestClient, body: dict[str, Any] | None = None, **kw: Any) -> Any:
    resp = await client.post("/sessions", json=body or {"job_role": "Backend engineer"}, **kw)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def row_of(db: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM interview_sessions WHERE session_id = $1", uuid.UUID(session_id)
    )


async def test_create_returns_id_token_and_join_url(client: TestClient, db: asyncpg.Connection):
    body = await create(client)
    session_id = uuid.UUID(body["session_id"])
    assert len(body["token"]) >= 24
    assert body["join_url"].startswith(str(client.make_url("/")))
    assert f"session={session_id}" in body["join_url"] and body["token"] in body["join_url"]
    row = await row_of(db, body["session_id"])
    assert row["status"] == "scheduled"  # nobody joined yet
    info = json.loads(row["session_information"])
    assert info["job_role"] == "Backend engineer"


async def test_info_has_the_reviewers_fields(client: TestClient):
    body = await create(client, {"job_role": "Data analyst"})
    resp = await client.get(f"/sessions/{body['session_id']}/info")
    assert resp.status == 200
    info = await resp.json()
    assert info["session_id"] == body["session_id"]
    assert info["recording_url"] is None
    fields = info["session_information"]
    for key in ("date_of_interview", "job_role", "conversation_history", "anomalies_detected",
                "resume_url", "recording_url", "asr_model", "llm_provider", "llm_model"):
        assert key in fields
    assert fields["job_role"] == "Data analyst"
    assert fields["conversation_history"] == [] and fields["anomalies_detected"] == []


async def test_save_is_an_idempotent_upsert(client: TestClient, db: asyncpg.Connection):
    body = await create(client)
    for _ in range(2):
        resp = await client.post(f"/sessions/{body['session_id']}/save")
        assert resp.status == 200
        saved = await resp.json()
        assert saved["status"] == "saved" and saved["session_id"] == body["session_id"]
        assert saved["message"]
    count = await db.fetchval("SELECT count(*) FROM interview_sessions")
    assert count == 1
    assert (await row_of(db, body["session_id"]))["status"] == "scheduled"
    # The session stays live after a save.
    assert (await client.get(f"/sessions/{body['session_id']}/info")).status == 200


async def test_end_saves_completed_and_removes(client: TestClient, db: asyncpg.Connection):
    body = await create(client)
    sid = body["session_id"]
    resp = await client.post(f"/sessions/{sid}/end")
    assert resp.status == 200
    ended = await resp.json()
    assert ended["status"] == "ended" and ended["session_id"] == sid and ended["message"]
    row = await row_of(db, sid)
    assert row["status"] == "completed"
    assert row["end_time"] is not None and row["end_time"] >= row["start_time"]
    # Gone from memory: ending or saving again is a conflict, reading comes from the DB.
    assert (await client.post(f"/sessions/{sid}/end")).status == 409
    assert (await client.post(f"/sessions/{sid}/save")).status == 409
    stored = await (await client.get(f"/sessions/{sid}")).json()
    assert stored["status"] == "completed" and stored["end_time"] is not None


async def test_delete_saves_then_removes(client: TestClient, db: asyncpg.Connection):
    body = await create(client)
    sid = body["session_id"]
    resp = await client.delete(f"/sessions/{sid}")
    assert resp.status == 200
    deleted = await resp.json()
    assert deleted["status"] == "deleted" and deleted["session_id"] == sid
    assert (await row_of(db, sid))["status"] == "completed"
    assert (await client.delete(f"/sessions/{sid}")).status == 409


async def test_get_session_reads_live_then_stored(client: TestClient):
    body = await create(client, {"job_role": "SRE"})
    sid = body["session_id"]
    live = await (await client.get(f"/sessions/{sid}")).json()
    assert live["status"] == "scheduled"
    assert set(live) == {"session_id", "interviewee_id", "template_id", "start_time", "end_time",
                         "status", "session_information", "Interview_report", "recording_url",
                         "resume_url"}
    await client.post(f"/sessions/{sid}/end")
    stored = await (await client.get(f"/sessions/{sid}")).json()
    assert stored["status"] == "completed"
    assert stored["session_information"]["job_role"] == "SRE"


async def test_template_gives_job_role(client: TestClient, db: asyncpg.Connection):
    template_id = await db.fetchval(
        "INSERT INTO job_templates (job_role, questions) VALUES ($1, $2) RETURNING template_id",
        "Site reliability engineer",
        json.dumps(["Tell me about an outage you handled."]),
    )
    body = await create(client, {"template_id": str(template_id)})
    row = await row_of(db, body["session_id"])
    assert row["template_id"] == template_id
    assert json.loads(row["session_information"])["job_role"] == "Site reliability engineer"
    resp = await client.post("/sessions", json={"template_id": str(uuid.uuid4())})
    assert resp.status == 404 and "template" in (await resp.json())["error"]


async def test_interviewee_must_exist(client: TestClient, db: asyncpg.Connection):
    interviewee_id = await db.fetchval(
        "INSERT INTO interviewee_profiles (full_name) VALUES ('Ada') RETURNING interviewee_id"
    )
    body = await create(client, {"job_role": "QA", "interviewee_id": str(interviewee_id)})
    assert (await row_of(db, body["session_id"]))["interviewee_id"] == interviewee_id
    resp = await client.post("/sessions", json={"job_role": "QA", "interviewee_id": str(uuid.uuid4())})
    assert resp.status == 404


async def test_resume_upload_is_stored_and_served(client: TestClient, db: asyncpg.Connection):
    pdf = pdf_bytes()
    form = aiohttp.FormData()
    form.add_field("job_role", "Frontend engineer")
    form.add_field("resume", pdf, filename="cv.pdf", content_type="application/pdf")
    resp = await client.post("/sessions", data=form)
    assert resp.status == 201, await resp.text()
    sid = (await resp.json())["session_id"]
    row = await row_of(db, sid)
    resume_url = row["resume_url"]
    assert resume_url.endswith(f"/sessions/{sid}/resume")
    served = await client.get(f"/sessions/{sid}/resume")
    assert served.status == 200 and served.content_type == "application/pdf"
    assert await served.read() == pdf


@pytest.mark.parametrize(
    ("payload", "content_type", "status"),
    [
        (b"not a pdf at all", "application/pdf", 415),
        (pdf_bytes(), "image/png", 415),
        (b"%PDF-1.4\n" + b"0" * (5 * 1024 * 1024), "application/pdf", 413),
    ],
)
async def test_bad_resume_is_refused(client: TestClient, payload: bytes, content_type: str, status: int):
    form = aiohttp.FormData()
    form.add_field("job_role", "QA")
    form.add_field("resume", io.BytesIO(payload), filename="cv.pdf", content_type=content_type)
    resp = await client.post("/sessions", data=form)
    assert resp.status == status
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b'{"job_role": 5}', {"Content-Type": "application/json"}, 400),
        (b'{"job_role": ""}', {"Content-Type": "application/json"}, 400),
        (b"{}", {"Content-Type": "application/json"}, 400),
        (b'{"job_role": "QA", "salary": 1}', {"Content-Type": "application/json"}, 400),
        (b'{"job_role": "QA", "template_id": "nope"}', {"Content-Type": "application/json"}, 400),
        (b'{"job_role": "QA", "resume_url": "file:///etc/passwd"}', {"Content-Type": "application/json"}, 400),
        (b'{"job_role": "' + b"x" * 300 + b'"}', {"Content-Type": "application/json"}, 400),
        (b'{"job_role": "' + b"x" * (1024 * 1024) + b'"}', {"Content-Type": "application/json"}, 413),
        (b"job_role=QA", {"Content-Type": "text/plain"}, 415),
    ],
)
async def test_bad_create_bodies(client: TestClient, body: bytes, headers: dict[str, str], status: int):
    resp = await client.post("/sessions", data=io.BytesIO(body), headers=headers)
    assert resp.status == status
    assert isinstance((await resp.json())["error"], str)


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_bad_and_unknown_ids(client: TestClient, method: str):
    paths = {"GET": "/sessions/{}/info", "POST": "/sessions/{}/save", "DELETE": "/sessions/{}"}
    path = paths[method]
    resp = await client.request(method, path.format("not-a-uuid"))
    assert resp.status == 400 and "UUID" in (await resp.json())["error"]
    resp = await client.request(method, path.format(uuid.uuid4()))
    assert resp.status == 404 and "error" in await resp.json()


async def test_wrong_method_and_path_answer_json(client: TestClient):
    resp = await client.put("/sessions")
    assert resp.status == 405 and "error" in await resp.json()
    resp = await client.get("/nope")
    assert resp.status == 404 and "error" in await resp.json()


async def test_api_key_guards_management(make_client: AppFactory):
    client = await make_client(api_key="s3cret-key")
    assert (await client.post("/sessions", json={"job_role": "QA"})).status == 401
    wrong = {"Authorization": "Bearer nope"}
    resp = await client.post("/sessions", json={"job_role": "QA"}, headers=wrong)
    assert resp.status == 401 and "error" in await resp.json()
    good = {"Authorization": "Bearer s3cret-key"}
    body = await create(client, {"job_role": "QA"}, headers=good)
    sid = body["session_id"]
    for method, path in [("GET", f"/sessions/{sid}"), ("GET", f"/sessions/{sid}/info"),
                         ("POST", f"/sessions/{sid}/save"),
                         ("DELETE", f"/sessions/{sid}"), ("GET", f"/sessions/{sid}/resume"),
                         ("GET", "/metrics"), ("GET", f"/sessions/{sid}/recording")]:
        assert (await client.request(method, path)).status == 401, path
        # The candidate's token is not a management credential.
        token = {"Authorization": f"Bearer {body['token']}"}
        assert (await client.request(method, path, headers=token)).status == 401, path
    assert (await client.get(f"/sessions/{sid}/info", headers=good)).status == 200
    assert (await client.post(f"/sessions/{sid}/end")).status == 401
    # The candidate may end their own interview with the session's token.
    candidate = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.post(f"/sessions/{sid}/end", headers=candidate)).status == 200
    other = await create(client, {"job_role": "QA"}, headers=good)
    assert (await client.post(f"/sessions/{other['session_id']}/end", headers=good)).status == 200
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics", headers=good)).status == 200


async def test_an_unused_invitation_expires_and_is_closed(
    make_client: AppFactory, db: asyncpg.Connection
):
    client = await make_client(invite_ttl_s=0.5, checkpoint_s=0.1)
    resp = await client.post("/sessions", json={"job_role": "Baker"})
    sid = (await resp.json())["session_id"]
    row = await db.fetchrow("SELECT status FROM interview_sessions WHERE session_id = $1",
                            uuid.UUID(sid))
    assert row["status"] == "scheduled"
    for _ in range(50):
        row = await db.fetchrow("SELECT status, end_time FROM interview_sessions "
                                "WHERE session_id = $1", uuid.UUID(sid))
        if row["status"] != "scheduled":
            break
        await asyncio.sleep(0.1)
    assert row["status"] == "expired" and row["end_time"] is not None
    candidate = Candidate(None, None)
    offer = {"sdp": await candidate.offer(), "type": "offer"}
    await candidate.close()
    resp = await client.post(f"/sessions/{sid}/offer", json=offer)
    assert resp.status == 409  # it has ended
