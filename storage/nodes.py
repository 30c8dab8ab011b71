"""The node directory in PostgreSQL: which server node holds which live interview.

Several server nodes share one database. Each one writes a heartbeat every
few seconds (`server_nodes`: its URL, load, whether it admits new sessions,
whether it is draining) together with the set of interviews it holds
(`node_sessions`). From these:

- any node can find the one that holds a session (`owner`) and forward a
  call about it there (`api.forward`);
- every node sweeps for nodes whose heartbeat stopped (`sweep_dead`): their
  interviews still `in_progress` are marked `interrupted` in the same
  transaction that removes the dead node, so a node killed with SIGKILL
  leaves no interview open for longer than `dead_after_s` plus one
  heartbeat. An interview is only taken for dead when its own checkpoint is
  stale too, so a node that merely lost its heartbeat for a moment, but
  still saves its rows, is left alone.

The tables are the project's own, beside the seed's; nothing here alters
`interview_sessions` beyond the status of abandoned rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from engine.session import SessionRow
from storage.pg import COLUMNS, SessionStore, row_of

__all__ = ["NodeBeat", "NodeDirectory", "NodeInfo"]

_BEAT = """
INSERT INTO server_nodes (node_id, node_index, url, admits, draining, live_sessions, load,
    started_at, heartbeat_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, now(), now())
ON CONFLICT (node_id) DO UPDATE SET
    node_index = EXCLUDED.node_index, url = EXCLUDED.url, admits = EXCLUDED.admits,
    draining = EXCLUDED.draining, live_sessions = EXCLUDED.live_sessions,
    load = EXCLUDED.load, heartbeat_at = now(),
    started_at = CASE WHEN $8 THEN now() ELSE server_nodes.started_at END
"""

_HOLD = """
INSERT INTO node_sessions (session_id, node_id) SELECT unnest($2::uuid[]), $1
ON CONFLICT (session_id) DO UPDATE SET node_id = EXCLUDED.node_id, since = now()
WHERE node_sessions.node_id IS DISTINCT FROM EXCLUDED.node_id
"""

_RELEASE = "DELETE FROM node_sessions WHERE node_id = $1 AND NOT (session_id = ANY($2::uuid[]))"

_OWNER = """
SELECT n.node_id, n.node_index, n.url, n.admits, n.draining, n.live_sessions, n.load
FROM node_sessions s JOIN server_nodes n USING (node_id)
WHERE s.session_id = $1 AND n.heartbeat_at > now() - make_interval(secs => $2)
"""

_NODES = """
SELECT node_id, node_index, url, admits, draining, live_sessions, load,
    heartbeat_at > now() - make_interval(secs => $1) AS alive
FROM server_nodes ORDER BY node_index NULLS LAST, node_id
"""

_DEAD = """
SELECT node_id FROM server_nodes
WHERE heartbeat_at < now() - make_interval(secs => $1) AND node_id <> $2
FOR UPDATE SKIP LOCKED
"""

_INTERRUPT = f"""
UPDATE interview_sessions SET status = 'interrupted'
WHERE status = 'in_progress'
  AND session_id IN (SELECT session_id FROM node_sessions WHERE node_id = ANY($1::text[]))
  AND coalesce((session_information->>'checkpoint_at')::timestamptz, start_time)
      < now() - make_interval(secs => $2)
RETURNING {COLUMNS}
"""

# The sessions still open are kept under the dead node for the next sweep.
_FORGET = """
DELETE FROM server_nodes n WHERE node_id = ANY($1::text[]) AND NOT EXISTS (
    SELECT 1 FROM node_sessions s JOIN interview_sessions i USING (session_id)
    WHERE s.node_id = n.node_id AND i.status = 'in_progress')
"""


# Take a session over: only from a node whose heartbeat stopped (or none),
# and never one whose row names a live recorder other than the claimant (a
# session that started there too lately to be in its heartbeat yet), unless
# that node is draining (what it let go may go on elsewhere).
_CLAIM = """
INSERT INTO node_sessions (session_id, node_id)
SELECT $1, $2 WHERE NOT EXISTS (
    SELECT 1 FROM interview_sessions i
    JOIN server_nodes n ON n.node_id = i.session_information->>'server_instance'
    WHERE i.session_id = $1 AND n.node_id <> $2 AND NOT n.draining
    AND n.heartbeat_at > now() - make_interval(secs => $3))
ON CONFLICT (session_id) DO UPDATE SET node_id = EXCLUDED.node_id, since = now()
WHERE node_sessions.node_id = EXCLUDED.node_id OR NOT EXISTS (
    SELECT 1 FROM server_nodes n WHERE n.node_id = node_sessions.node_id
    AND n.heartbeat_at > now() - make_interval(secs => $3))
RETURNING node_id
"""


# Decisions about flags the dead node had not checkpointed: those anomalies
# are gone, and the survivor's next ones take their numbers. Each such flag
# is set open again, in the log, saying why.
_VOID_LOST_FLAGS = """
INSERT INTO interview_review_decisions (session_id, flag_index, decision, note, decided_by)
SELECT DISTINCT $1::uuid, flag_index, 'open', $3, 'system'
FROM interview_review_decisions WHERE session_id = $1 AND flag_index >= $2
"""


@dataclass(frozen=True)
class NodeBeat:
    """What a node says of itself in each heartbeat."""

    node_id: str
    node_index: int | None
    url: str | None
    admits: bool
    draining: bool
    load: float
    sessions: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    node_index: int | None
    url: str | None
    admits: bool
    draining: bool
    live_sessions: int
    load: float
    alive: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id, "node_index": self.node_index, "url": self.url,
            "admits": self.admits, "draining": self.draining,
            "live_sessions": self.live_sessions, "load": round(self.load, 3),
            "alive": self.alive,
        }


class NodeDirectory:
    def __init__(self, store: SessionStore, *, dead_after_s: float) -> None:
        self._store = store
        self.dead_after_s = dead_after_s
        self._first = True

    async def beat(self, beat: NodeBeat) -> None:
        """Write this node's heartbeat and the interviews it holds now."""
        held = list(beat.sessions)
        async with self._store.connection() as conn, conn.transaction():
            await conn.execute(_BEAT, beat.node_id, beat.node_index, beat.url, beat.admits,
                               beat.draining, len(held), beat.load, self._first)
            await conn.execute(_RELEASE, beat.node_id, held)
            if held:
                await conn.execute(_HOLD, beat.node_id, held)
        self._first = False

    async def leave(self, node_id: str) -> None:
        """A clean stop: this node holds nothing any more."""
        async with self._store.connection() as conn:
            await conn.execute("DELETE FROM server_nodes WHERE node_id = $1", node_id)

    async def owner(self, session_id: uuid.UUID) -> NodeInfo | None:
        """The live node that holds `session_id`, if any."""
        async with self._store.connection() as conn:
            record = await conn.fetchrow(_OWNER, session_id, self.dead_after_s)
        return None if record is None else NodeInfo(*record.values())

    async def claim(self, session_id: uuid.UUID, node_id: str,
                    kept_flags: int | None = None) -> bool:
        """Hold `session_id` from now on, unless a live node holds it (atomic:
        of two nodes claiming at once, one wins).

        `kept_flags`: a takeover from a checkpoint that kept this many flags;
        in the same transaction, review decisions about later flags (lost
        with the node) are set open again.
        """
        async with self._store.connection() as conn, conn.transaction():
            won = await conn.fetchval(_CLAIM, session_id, node_id, self.dead_after_s)
            if won == node_id and kept_flags is not None:
                await conn.execute(
                    _VOID_LOST_FLAGS, session_id, kept_flags,
                    "the flag this decision was about was lost with the node that recorded "
                    "it; a later flag took its number")
        return bool(won == node_id)

    async def nodes(self) -> list[NodeInfo]:
        async with self._store.connection() as conn:
            records = await conn.fetch(_NODES, self.dead_after_s)
        return [NodeInfo(*record.values()) for record in records]

    async def sweep_dead(
        self, me: str,
        before_commit: Callable[[list[SessionRow]], Awaitable[None]] | None = None,
        after_commit: Callable[[list[SessionRow]], None] | None = None,
    ) -> list[SessionRow]:
        """Mark the open interviews of nodes whose heartbeat stopped `interrupted`.

        `before_commit` gets those rows while the change can still be undone
        (a webhook event stored for each); when it raises, nothing changes.
        `after_commit` gets them once the change is committed.
        """
        async with self._store.connection() as conn:
            async with conn.transaction():
                dead = [r["node_id"] for r in await conn.fetch(_DEAD, self.dead_after_s, me)]
                if not dead:
                    return []
                rows = [row_of(r) for r in await conn.fetch(_INTERRUPT, dead, self.dead_after_s)]
                if rows and before_commit is not None:
                    await before_commit(rows)
                await conn.execute(_FORGET, dead)
            if rows and after_commit is not None:
                after_commit(rows)  # committed (see SessionStore.mark_interrupted)
        return rows


def session_ids(ids: Iterable[uuid.UUID]) -> tuple[uuid.UUID, ...]:
    return tuple(sorted(set(ids)))
