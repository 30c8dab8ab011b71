"""PostgreSQL access through asyncpg: schema, upsert, reads.

The schema matches the `interview_sessions` table that Supabase projects use.
It is created idempotently and never drops or alters an existing table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from engine.review import Decision
from engine.session import SessionRow

__all__ = ["DatabaseUnavailable", "DecisionLogFull", "MAX_DECISIONS", "SessionStore",
           "SessionSummary", "Template", "SCHEMA", "refused_for_content"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS interviewee_profiles (
    interviewee_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    full_name text NULL,
    email text NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS job_templates (
    template_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_role text NULL,
    questions jsonb NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS interview_sessions (
    session_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    interviewee_id uuid NULL REFERENCES interviewee_profiles ON DELETE CASCADE,
    template_id uuid NULL REFERENCES job_templates ON DELETE SET NULL,
    start_time timestamptz NULL,
    end_time timestamptz NULL,
    status text NOT NULL,
    session_information jsonb NULL,
    "Interview_report" jsonb NULL,
    recording_url text NULL,
    resume_url text NULL
);
-- Ours, beside the seed's tables (which are never altered): the reviewers'
-- decisions, an append-only log (engine/review.py). `flag_index` is the
-- anomaly's index in session_information.anomalies_detected; NULL is the
-- interview's overall review status.
CREATE TABLE IF NOT EXISTS interview_review_decisions (
    decision_id bigserial PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES interview_sessions ON DELETE CASCADE,
    flag_index integer NULL CHECK (flag_index >= 0),
    decision text NOT NULL,
    note text NULL,
    decided_by text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS interview_review_decisions_session
    ON interview_review_decisions (session_id, decision_id);
-- Secrets every node must share (the review-token key).
CREATE TABLE IF NOT EXISTS server_secrets (
    name text PRIMARY KEY,
    secret bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The node directory (storage/nodes.py): every server node, its heartbeat,
-- and which live interviews it holds.
CREATE TABLE IF NOT EXISTS server_nodes (
    node_id text PRIMARY KEY,
    node_index integer NULL,
    url text NULL,
    admits boolean NOT NULL,
    draining boolean NOT NULL,
    live_sessions integer NOT NULL,
    load real NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS node_sessions (
    session_id uuid PRIMARY KEY,
    node_id text NOT NULL REFERENCES server_nodes ON DELETE CASCADE,
    since timestamptz NOT NULL DEFAULT now()
);
"""

# The log of one session is bounded for review tokens (a leaked decide
# token cannot grow it without end); past the bound nothing is inserted.
# The API key holder may go on (and so is never locked out by one).
MAX_DECISIONS = 1000
_INSERT_DECISION = """
INSERT INTO interview_review_decisions (session_id, flag_index, decision, note, decided_by)
SELECT $1, $2, $3, $4, $5
WHERE $6::int IS NULL
   OR (SELECT count(*) FROM interview_review_decisions WHERE session_id = $1) < $6
RETURNING decision_id, flag_index, decision, note, decided_by, decided_at
"""

_SELECT_DECISIONS = """
SELECT decision_id, flag_index, decision, note, decided_by, decided_at
FROM interview_review_decisions
WHERE session_id = $1 ORDER BY decision_id
"""

# The sessions list: newest first, with each one's review state. The latest
# decision per flag (and overall) comes from the log.
_LIST_SESSIONS = """
SELECT * FROM (
    SELECT s.session_id, s.status, s.start_time, s.end_time, s.recording_url,
        s.session_information->>'job_role' AS job_role,
        CASE WHEN jsonb_typeof(s.session_information->'anomalies_detected') = 'array'
             THEN jsonb_array_length(s.session_information->'anomalies_detected') ELSE 0
        END AS flags,
        (SELECT count(*) FROM (
            SELECT DISTINCT ON (d.flag_index) d.decision FROM interview_review_decisions d
            WHERE d.session_id = s.session_id AND d.flag_index IS NOT NULL
            ORDER BY d.flag_index, d.decision_id DESC) latest
         WHERE latest.decision <> 'open') AS decided_flags,
        COALESCE((SELECT d.decision FROM interview_review_decisions d
                  WHERE d.session_id = s.session_id AND d.flag_index IS NULL
                  ORDER BY d.decision_id DESC LIMIT 1), 'unreviewed') AS review_status
    FROM interview_sessions s
    WHERE ($1::text IS NULL OR s.status = $1)
      AND ($2::timestamptz IS NULL OR s.start_time >= $2)
      AND ($3::timestamptz IS NULL OR s.start_time < $3)
      -- After the cursor ($6 = the last row's start_time, $7 its id), in the
      -- order below: later pages never repeat or skip a row.
      AND ($7::uuid IS NULL OR CASE
          WHEN $6::timestamptz IS NULL THEN s.start_time IS NULL AND s.session_id > $7
          ELSE s.start_time < $6 OR (s.start_time = $6 AND s.session_id > $7)
               OR s.start_time IS NULL END)
) listed
WHERE $4::text IS NULL OR review_status = $4
ORDER BY start_time DESC NULLS LAST, session_id
LIMIT $5
"""

_UPSERT = """
INSERT INTO interview_sessions (session_id, interviewee_id, template_id, start_time,
    end_time, status, session_information, "Interview_report", recording_url, resume_url)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (session_id) DO UPDATE SET
    interviewee_id = EXCLUDED.interviewee_id, template_id = EXCLUDED.template_id,
    start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
    status = EXCLUDED.status, session_information = EXCLUDED.session_information,
    "Interview_report" = EXCLUDED."Interview_report",
    recording_url = EXCLUDED.recording_url, resume_url = EXCLUDED.resume_url
"""

_COLUMNS = """session_id, interviewee_id, template_id, start_time, end_time, status,
    session_information, "Interview_report", recording_url, resume_url"""

_SELECT = f"SELECT {_COLUMNS} FROM interview_sessions WHERE session_id = $1"

# Invitations this instance handed out that nobody has joined yet.
_SELECT_SCHEDULED = f"""
SELECT {_COLUMNS} FROM interview_sessions
WHERE status = 'scheduled' AND session_information->>'server_instance' = $1
"""

# Rows left `in_progress` by an earlier process of this instance (same data
# directory, another run), and anybody's whose last checkpoint is too old.
_MARK_INTERRUPTED = f"""
UPDATE interview_sessions SET status = 'interrupted'
WHERE status = 'in_progress' AND (
    (session_information->>'server_instance' = $1
     AND session_information->>'server_run' IS DISTINCT FROM $3)
    OR (session_information->>'checkpoint_at')::timestamptz < now() - make_interval(secs => $2)
)
RETURNING {_COLUMNS}
"""

# What counts as "the database is down, try later" rather than a bug.
_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


# What says "this row, as it is, will never be taken": retrying cannot help.
_REFUSED = (
    asyncpg.DataError,  # class 22: a NUL character, a lone surrogate, bad JSON...
    asyncpg.IntegrityConstraintViolationError,  # class 23
    asyncpg.ProgramLimitExceededError,  # class 54: a value too large
)


class DatabaseUnavailable(Exception):
    """The database could not be reached; the operation may be retried."""


class DecisionLogFull(Exception):
    """The session's review log holds `MAX_DECISIONS` entries already."""


def refused_for_content(exc: BaseException) -> bool:
    """Whether `exc` refuses a row for what it holds rather than for the database's state.

    asyncpg reports a value its encoders cannot take (a lone surrogate, an
    object JSON cannot encode) as `asyncpg.DataError` too. Everything else a
    write raises (connection loss, a full disk on the database's side,
    permissions, an unexpected error) may pass, and is retried.
    """
    if isinstance(exc, DatabaseUnavailable):
        return False
    return isinstance(exc, (*_REFUSED, ValueError, TypeError))


@dataclass(frozen=True)
class Template:
    """A row of `job_templates`."""

    template_id: uuid.UUID
    job_role: str | None
    questions: list[str]


@dataclass(frozen=True)
class SessionSummary:
    """One line of the sessions list."""

    session_id: uuid.UUID
    status: str
    start_time: datetime | None
    end_time: datetime | None
    job_role: str | None
    flags: int
    open_flags: int
    review_status: str
    recording_url: str | None


class SessionStore:
    """The sessions table behind a lazily connected asyncpg pool.

    The pool is created with no eager connections, so the server starts (and
    queues rows in its outbox) even while the database is unreachable; the
    schema is ensured on the first successful connection.
    """

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=4,
            timeout=self._timeout,
            command_timeout=self._timeout,
            statement_cache_size=0 if _behind_pgbouncer(self._dsn) else 100,
            init=_init_connection,
        )
        try:
            async with self._acquire():
                pass  # creates the schema
        except DatabaseUnavailable as exc:
            log.warning("database unreachable at start-up (%s); rows go to the outbox", exc)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def upsert(self, row: SessionRow) -> None:
        """Insert or update the row by `session_id` (idempotent)."""
        await self._execute(
            _UPSERT,
            row.session_id,
            row.interviewee_id,
            row.template_id,
            row.start_time,
            row.end_time,
            row.status,
            row.session_information,
            row.interview_report,
            row.recording_url,
            row.resume_url,
        )

    async def fetch(self, session_id: uuid.UUID) -> SessionRow | None:
        record = await self._fetchrow(_SELECT, session_id)
        return None if record is None else _row(record)

    async def fetch_scheduled(self, server_instance: str) -> list[SessionRow]:
        """The `scheduled` rows (open invitations) of `server_instance`."""
        return [_row(record) for record in await self._fetch(_SELECT_SCHEDULED, server_instance)]

    async def fetch_template(self, template_id: uuid.UUID) -> Template | None:
        record = await self._fetchrow(
            "SELECT template_id, job_role, questions FROM job_templates WHERE template_id = $1",
            template_id,
        )
        if record is None:
            return None
        questions = record["questions"]
        if not isinstance(questions, list):
            questions = []
        return Template(record["template_id"], record["job_role"], [str(q) for q in questions])

    async def interviewee_exists(self, interviewee_id: uuid.UUID) -> bool:
        query = "SELECT 1 FROM interviewee_profiles WHERE interviewee_id = $1"
        return await self._fetchrow(query, interviewee_id) is not None

    async def mark_interrupted(
        self,
        server_instance: str,
        server_run: str,
        stale_after_s: float,
        *,
        before_commit: Callable[[list[SessionRow]], Awaitable[None]] | None = None,
        after_commit: Callable[[list[SessionRow]], None] | None = None,
    ) -> int:
        """Declare rows abandoned by dead processes `interrupted`; return how many.

        `before_commit` gets the rows so marked while the change can still be
        undone: when it raises, they stay `in_progress` for the next sweep, so
        what it records about them (a webhook event) is never lost.
        `after_commit` gets them once the change is committed (the events go
        out then, never ahead of the rows they tell of).
        """
        async with self._acquire() as conn:
            async with conn.transaction():
                records = await conn.fetch(_MARK_INTERRUPTED, server_instance, stale_after_s,
                                           server_run)
                rows = [_row(record) for record in records]
                if rows and before_commit is not None:
                    await before_commit(rows)
            # Committed: told here, before the connection goes back to the pool
            # (whose reset may fail without undoing anything).
            if rows and after_commit is not None:
                after_commit(rows)
        return len(rows)

    async def server_secret(self, name: str) -> bytes:
        """The secret `name`, made (32 random bytes) by whichever node asks first."""
        async with self._acquire() as conn:
            await conn.execute(
                "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING", name, secrets.token_bytes(32))
            value = await conn.fetchval("SELECT secret FROM server_secrets WHERE name = $1", name)
        return bytes(value)

    async def add_decision(
        self, session_id: uuid.UUID, flag: int | None, decision: str, note: str | None,
        decided_by: str, *, bounded: bool = True,
    ) -> Decision | None:
        """Log a review decision; None when the session has no row (yet).

        Raises `DecisionLogFull` past `MAX_DECISIONS` entries for the session
        (unless not `bounded`: the API key holder's decisions).
        """
        try:
            record = await self._fetchrow(_INSERT_DECISION, session_id, flag, decision, note,
                                          decided_by, MAX_DECISIONS if bounded else None)
        except asyncpg.ForeignKeyViolationError:
            return None
        if record is None:
            raise DecisionLogFull(session_id)
        return _decision(record)

    async def decisions(self, session_id: uuid.UUID) -> list[Decision]:
        """The session's decision log, oldest first."""
        return [_decision(record) for record in await self._fetch(_SELECT_DECISIONS, session_id)]

    async def list_sessions(
        self, *, status: str | None = None, since: datetime | None = None,
        until: datetime | None = None, review_status: str | None = None, limit: int = 50,
        after: tuple[datetime | None, uuid.UUID] | None = None,
    ) -> list[SessionSummary]:
        """Recent sessions (newest first: not started ones last) with their
        review state; `after`: the `(start_time, session_id)` of the last
        one of the previous page."""
        after_time, after_id = after if after is not None else (None, None)
        records = await self._fetch(_LIST_SESSIONS, status, since, until, review_status, limit,
                                    after_time, after_id)
        return [
            SessionSummary(
                session_id=r["session_id"], status=r["status"], start_time=r["start_time"],
                end_time=r["end_time"], job_role=r["job_role"], flags=r["flags"],
                open_flags=max(0, r["flags"] - r["decided_flags"]),
                review_status=r["review_status"], recording_url=r["recording_url"],
            )
            for r in records
        ]

    async def _execute(self, query: str, *args: Any) -> None:
        async with self._acquire() as conn:
            await conn.execute(query, *args)

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._acquire() as conn:
            return list(await conn.fetch(query, *args))

    def connection(self) -> _Connection:
        """`async with store.connection() as conn:` a pooled connection, with
        transient failures raised as `DatabaseUnavailable` (storage modules)."""
        return self._acquire()

    def _acquire(self) -> _Connection:
        if self._pool is None:
            raise RuntimeError("SessionStore.open() was not called")
        return _Connection(self, self._pool)

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                await conn.execute(SCHEMA)
                self._schema_ready = True
                log.info("schema ensured")


class _Connection:
    """Acquire a pooled connection, map transient failures to DatabaseUnavailable."""

    def __init__(self, store: SessionStore, pool: asyncpg.Pool) -> None:
        self._store = store
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await self._pool.acquire()
            await self._store._ensure_schema(self._conn)
        except BaseException as exc:
            await self._release()
            if _transient(exc):
                raise DatabaseUnavailable(_describe(exc)) from exc
            raise
        return self._conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._release()
        if exc is not None and _transient(exc):
            raise DatabaseUnavailable(_describe(exc)) from exc

    async def _release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._pool.release(conn)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


def _behind_pgbouncer(dsn: str) -> bool:
    """Supabase's transaction pooler (port 6543) cannot keep prepared statements."""
    parts = urlsplit(dsn)
    try:
        port = parts.port
    except ValueError:
        return False
    return port == 6543 or "pooler." in (parts.hostname or "")


def _transient(exc: BaseException) -> bool:
    # asyncpg's client-side DataError is an InterfaceError and a ValueError:
    # a value refused, not a connection lost.
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, ValueError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _row(record: asyncpg.Record) -> SessionRow:
    return SessionRow(
        session_id=record["session_id"],
        interviewee_id=record["interviewee_id"],
        template_id=record["template_id"],
        start_time=record["start_time"],
        end_time=record["end_time"],
        status=record["status"],
        session_information=record["session_information"],
        interview_report=record["Interview_report"],
        recording_url=record["recording_url"],
        resume_url=record["resume_url"],
    )


def _decision(record: asyncpg.Record) -> Decision:
    return Decision(record["flag_index"], record["decision"], record["note"],
                    record["decided_by"], record["decided_at"], record["decision_id"])


# For the other storage modules that read rows of `interview_sessions`.
COLUMNS = _COLUMNS


def row_of(record: asyncpg.Record) -> SessionRow:
    """A `SessionRow` from a record holding `COLUMNS`."""
    return _row(record)
