"""Saving session rows without ever losing one.

`SessionWriter.save()` writes straight to PostgreSQL. When the database cannot
take the row it goes to the durable outbox instead and the caller is told
`queued`; a background task retries with backoff until the outbox is empty.
Writes of one session are serialised, and a direct save supersedes whatever
the outbox held for that session, so an older snapshot never overwrites a
newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg

from engine.aio import KeyedLock, cancel_and_wait
from engine.session import SessionRow, SessionStatus
from storage.outbox import Outbox
from storage.pg import DatabaseUnavailable, SessionStore

__all__ = ["SaveResult", "SessionWriter"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class SaveResult(enum.StrEnum):
    SAVED = "saved"
    QUEUED = "queued"
    # The interviewee was deleted: `on delete cascade` says the row goes too.
    DROPPED = "dropped"


class _IntervieweeGone(Exception):
    pass


class SessionWriter:
    def __init__(
        self,
        store: SessionStore,
        outbox: Outbox,
        *,
        server_instance: str,
        server_run: str,
        stale_after_s: float,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._server_instance = server_instance
        self._server_run = server_run
        self._stale_after_s = stale_after_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-io")
        self._writing = KeyedLock()  # one session's writes, in order
        self._queued: set[uuid.UUID] = set()
        self._sweep_needed = True
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.write_failures = 0
        self.rows_saved = 0

    @property
    def outbox_size(self) -> int:
        return len(self._queued)

    async def start(self) -> None:
        """Recover the outbox left by a previous process, then start retrying."""
        recovered = await self._run_io(self._recover_outbox)
        self._queued.update(recovered)
        if recovered:
            log.warning("outbox holds %d row(s) from a previous run", len(recovered))
        self._task = asyncio.create_task(self._run(), name="session-writer")

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait(task)
            await asyncio.to_thread(self._io.shutdown)

    async def save(self, row: SessionRow) -> SaveResult:
        """Store `row` now, or durably queue it if the database cannot take it."""
        async with self._writing.hold(row.session_id):
            try:
                await self._write(row)
            except _IntervieweeGone:
                await self._forget(row.session_id)
                return SaveResult.DROPPED
            except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
                self.write_failures += 1
                log.warning("session %s queued in the outbox: %s", row.session_id, exc)
                await self._run_io(self._outbox.put, row)
                self._queued.add(row.session_id)
                self._idle.clear()
                self._wake.set()
                return SaveResult.QUEUED
            await self._forget(row.session_id)
            return SaveResult.SAVED

    async def read_queued(self, session_id: uuid.UUID) -> SessionRow | None:
        """The snapshot of `session_id` waiting in the outbox, if any."""
        if session_id not in self._queued:
            return None
        return await self._run_io(self._outbox.get, session_id)

    async def wait_idle(self) -> None:
        """Wait until the outbox is empty and start-up recovery has run."""
        await self._idle.wait()

    async def _write(self, row: SessionRow) -> None:
        try:
            await self._store.upsert(row)
        except asyncpg.ForeignKeyViolationError as exc:
            detail = exc.detail or ""
            if "(template_id)" in detail:
                # Mirror `on delete set null`: the template went, the row stays.
                await self._store.upsert(replace(row, template_id=None))
            elif "(interviewee_id)" in detail:
                log.warning("session %s: interviewee deleted; row not stored", row.session_id)
                raise _IntervieweeGone from exc
            else:
                raise
        self.rows_saved += 1

    async def _forget(self, session_id: uuid.UUID) -> None:
        if session_id in self._queued:
            await self._run_io(self._outbox.discard, session_id)
            self._queued.discard(session_id)

    async def _run(self) -> None:
        delay = self._retry_min_s
        while True:
            if not self._queued and not self._sweep_needed:
                self._idle.set()
                await self._wake.wait()
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                await self._flush()
            except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
                self.write_failures += 1
                delay = min(delay * 2, self._retry_max_s)
                log.info("database still unavailable (%s); retry in %.1fs", exc, delay)
            else:
                delay = self._retry_min_s

    async def _flush(self) -> None:
        for session_id in list(self._queued):
            async with self._writing.hold(session_id):
                if session_id not in self._queued:
                    continue  # a direct save superseded it meanwhile
                row = await self._run_io(self._outbox.get, session_id)
                if row is not None:
                    with contextlib.suppress(_IntervieweeGone):
                        await self._write(row)
                await self._forget(session_id)
                log.info("session %s written from the outbox", session_id)
        if self._sweep_needed:
            count = await self._store.mark_interrupted(
                self._server_instance, self._server_run, self._stale_after_s
            )
            self._sweep_needed = False
            if count:
                log.warning("marked %d abandoned session(s) interrupted", count)

    def _recover_outbox(self) -> list[uuid.UUID]:
        """Rows this instance left `in_progress` died with it: say so."""
        ids = self._outbox.pending()
        for session_id in ids:
            row = self._outbox.get(session_id)
            if row is not None and row.status == SessionStatus.IN_PROGRESS.value:
                self._outbox.put(row.with_status(SessionStatus.INTERRUPTED.value))
        return ids

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
