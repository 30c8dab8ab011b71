"""The schema: exact columns, foreign-key actions, idempotent creation."""

from __future__ import annotations

import json
import uuid

import asyncpg

from engine.session import SessionRow
from storage.pg import SCHEMA, SessionStore

EXPECTED = {
    "session_id": ("uuid", "NO"),
    "interviewee_id": ("uuid", "YES"),
    "template_id": ("uuid", "YES"),
    "start_time": ("timestamp with time zone", "YES"),
    "end_time": ("timestamp with time zone", "YES"),
    "status": ("text", "NO"),
    "session_information": ("jsonb", "YES"),
    "Interview_report": ("jsonb", "YES"),
    "recording_url": ("text", "YES"),
    "resume_url": ("text", "YES"),
}


async def test_interview_sessions_columns(db: asyncpg.Connection):
    await db.execute(SCHEMA)
    rows = await db.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'interview_sessions'"
    )
    assert {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows} == EXPECTED
    pk = await db.fetchval(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'interview_sessions'::regclass "
        "AND i.indisprimary"
    )
    assert pk == "session_id"
    default = await db.fetchval(
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_name = 'interview_sessions' AND column_name = 'session_id'"
    )
    assert default == "gen_random_uuid()"


async def test_foreign_key_actions(db: asyncpg.Connection):
    await db.execute(SCHEMA)
    actions = await db.fetch(
        "SELECT confrelid::regclass::text AS target, confdeltype::text FROM pg_constraint "
        "WHERE conrelid = 'interview_sessions'::regclass AND contype = 'f'"
    )
    assert {r["target"]: r["confdeltype"] for r in actions} == {
        "interviewee_profiles": "c",  # on delete cascade
        "job_templates": "n",  # on delete set null
    }
    person = await db.fetchval("INSERT INTO interviewee_profiles DEFAULT VALUES RETURNING interviewee_id")
    template = await db.fetchval(
        "INSERT INTO job_templates (job_role, questions) VALUES ('QA', '[]') RETURNING template_id"
    )
    session = await db.fetchval(
        "INSERT INTO interview_sessions (interviewee_id, template_id, status) "
        "VALUES ($1, $2, 'completed') RETURNING session_id",
        person,
        template,
    )
    await db.execute("DELETE FROM job_templates WHERE template_id = $1", template)
    assert await db.fetchval(
        "SELECT template_id FROM interview_sessions WHERE session_id = $1", session
    ) is None
    await db.execute("DELETE FROM interviewee_profiles WHERE interviewee_id = $1", person)
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0


async def test_schema_creation_is_idempotent_and_keeps_user_tables(database_url: str):
    conn = await asyncpg.connect(database_url)
    try:
        # A user's existing table, with a column of their own and a row.
        await conn.execute(
            "CREATE TABLE job_templates (template_id uuid PRIMARY KEY, job_role text, "
            "questions jsonb, owner text)"
        )
        await conn.execute(
            "INSERT INTO job_templates VALUES ($1, 'QA', '[]', 'hr')", uuid.uuid4()
        )
        for _ in range(2):
            store = SessionStore(database_url)
            await store.open()
            await store.upsert(SessionRow(session_id=uuid.uuid4(), status="in_progress"))
            await store.close()
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'job_templates'"
        )
        assert "owner" in {c["column_name"] for c in columns}
        assert await conn.fetchval("SELECT owner FROM job_templates") == "hr"
        assert await conn.fetchval("SELECT count(*) FROM interview_sessions") == 2
    finally:
        await conn.close()


async def test_upsert_round_trips_a_full_row(database_url: str):
    store = SessionStore(database_url)
    await store.open()
    try:
        row = SessionRow(
            session_id=uuid.uuid4(),
            status="completed",
            session_information={"job_role": "QA", "conversation_history": [
                {"role": "assistant", "content": "Hello, I'm Serin."}]},
            interview_report={"questions": [], "total_talk_time_s": 0},
            recording_url="http://x/rec.webm",
        )
        await store.upsert(row)
        await store.upsert(row.with_status("completed"))
        back = await store.fetch(row.session_id)
        assert back is not None
        assert back.session_information == row.session_information
        assert back.interview_report == row.interview_report
        assert back.recording_url == row.recording_url
        assert json.dumps(back.to_json())
    finally:
        await store.close()
