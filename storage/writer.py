"""Saving session rows without ever losing one.

`SessionWriter.save()` writes straight to PostgreSQL. When the database cannot
take the row it goes to the durable outbox instead and the caller is told
`queued`; a background task retries with backoff until the outbox is empty.
Writes of one session are serialised, and a direct save supersedes whatever
the outbox held for that session, so an older snapshot never overwrites a
newer one.

Two failures are not "the database is down" and are never retried as such:

- PostgreSQL refuses the row for what it holds (a NUL character, a lone
  surrogate): retrying cannot help, and a row retried forever would hold up
  every row queued behind it. It is quarantined (`Outbox.quarantine_row`),
  logged and counted, and the caller is told `quarantined`.
- An outbox file cannot be read back: it is moved to the quarantine as it is.

When the outbox cannot be written either (the disk is full), the row is held
in memory, newest snapshot per session and at most `max_held` sessions, and
the caller is told `held`: not durable yet. The background task retries the
database and the outbox alike, whichever comes back first takes the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg

from engine.aio import KeyedLock, cancel_and_wait
from engine.session import SessionRow, SessionStatus
from storage.outbox import Outbox, OutboxCorrupt
from storage.pg import DatabaseUnavailable, SessionStore, refused_for_content

__all__ = ["RowNotAccepted", "SaveResult", "SessionWriter"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class SaveResult(enum.StrEnum):
    SAVED = "saved"
    QUEUED = "queued"
    # The interviewee was deleted: `on delete cascade` says the row goes too.
    DROPPED = "dropped"
    # Neither the database nor the outbox could take it: kept in memory only,
    # retried in the background. Not durable: the HTTP layer answers 503.
    HELD = "held"
    # PostgreSQL refused its content: kept in the quarantine, never retried.
    QUARANTINED = "quarantined"


class RowNotAccepted(DatabaseUnavailable):
    """Neither the database nor the disk took the row, and memory holds enough."""


class _IntervieweeGone(Exception):
    pass


class _StillHeld(Exception):
    """A round left rows in memory that the database did not refuse for being down."""


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
        max_held: int = 1000,
        on_interrupted: Callable[[list[SessionRow]], Awaitable[None]] | None = None,
        on_interrupted_saved: Callable[[list[SessionRow]], None] | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._server_instance = server_instance
        self._server_run = server_run
        self._stale_after_s = stale_after_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._max_held = max_held
        # Told of the rows found `in_progress` in the outbox at start, and of
        # those the start-up sweep marks `interrupted` in the database, before
        # that is committed (the webhook sender stores their events); then,
        # once it is (for the outbox's: once each row is written),
        # `on_interrupted_saved` (the events may go out).
        self._on_interrupted = on_interrupted
        self._on_interrupted_saved = on_interrupted_saved
        # Interrupted rows from the outbox, reported but not in the database yet.
        self._unsaved_interrupted: dict[uuid.UUID, SessionRow] = {}
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-io")
        self._writing = KeyedLock()  # one session's writes, in order
        self._queued: set[uuid.UUID] = set()  # a snapshot in the outbox
        # Newer than any outbox snapshot of the same session.
        self._held: dict[uuid.UUID, SessionRow] = {}
        self._sweep_needed = True
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.write_failures = 0
        self.rows_saved = 0
        self.rows_quarantined = 0

    @property
    def outbox_size(self) -> int:
        return len(self._queued)

    @property
    def held_size(self) -> int:
        """Rows only in memory: neither the database nor the outbox took them yet."""
        return len(self._held)

    async def start(self) -> None:
        """Recover the outbox left by a previous process, then start retrying."""
        recovered, held, quarantined, interrupted = await self._run_io(self._recover_outbox)
        self._queued.update(recovered)
        self._held.update(held)
        self.rows_quarantined += quarantined
        if recovered:
            log.warning("outbox holds %d row(s) from a previous run", len(recovered))
        if interrupted and self._on_interrupted is not None:
            # Told once each row is in the database (`_attempt`), not before.
            self._unsaved_interrupted.update((row.session_id, row) for row in interrupted)
            try:
                await self._on_interrupted(interrupted)
            except Exception:
                log.exception("%d interrupted session(s) from the outbox not reported",
                              len(interrupted))
        self._wake.set()  # a first round at once
        self._task = asyncio.create_task(self._run(), name="session-writer")

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait(task)
            await self._last_chance()
            await asyncio.to_thread(self._io.shutdown)

    async def save(self, row: SessionRow) -> SaveResult:
        """Store `row` now, else durably queue it, else hold it in memory.

        Raises `RowNotAccepted` (a `DatabaseUnavailable`) when it can only be
        held and `max_held` other sessions are held already.
        """
        async with self._writing.hold(row.session_id):
            result = await self._store_row(row, queued=False)
        if result in (SaveResult.QUEUED, SaveResult.HELD):
            self.write_failures += 1
            self._idle.clear()
            self._wake.set()
        return result

    async def _last_chance(self) -> None:
        """Closing: offer rows held in memory to the outbox once more, say what is lost."""
        for session_id in list(self._held):
            async with self._writing.hold(session_id):
                row = self._held.get(session_id)
                if row is not None:
                    await self._queue(row)
        if self._held:
            log.error("closing with %d row(s) that neither the database nor the disk took: %s",
                      len(self._held), ", ".join(map(str, self._held)))

    async def read_queued(self, session_id: uuid.UUID) -> SessionRow | None:
        """The snapshot of `session_id` waiting in memory or in the outbox, if any."""
        held = self._held.get(session_id)
        if held is not None or session_id not in self._queued:
            return held
        try:
            return await self._run_io(self._outbox.get, session_id)
        except OutboxCorrupt:
            self._wake.set()  # the background task quarantines it
            return None

    async def wait_idle(self) -> None:
        """Wait until the outbox and memory are empty and start-up recovery has run."""
        await self._idle.wait()

    async def _store_row(self, row: SessionRow, *, queued: bool) -> SaveResult:
        """Under the session's lock: the database, else the outbox, else memory."""
        result, _ = await self._attempt(row, queued=queued)
        return result

    async def _attempt(self, row: SessionRow, *, queued: bool) -> tuple[SaveResult, bool]:
        """Store `row`; return the result and whether the database was unavailable.

        `queued`: `row` is the outbox's snapshot, already on disk.
        """
        try:
            await self._write(row)
        except _IntervieweeGone:
            await self._forget(row.session_id)
            return SaveResult.DROPPED, False
        except Exception as exc:
            if refused_for_content(exc):
                return await self._quarantine_row(row, exc), False
            if not isinstance(exc, (DatabaseUnavailable, asyncpg.PostgresError)):
                log.exception("session %s: unexpected error writing the row", row.session_id)
            if queued:
                return SaveResult.QUEUED, True
            log.warning("session %s not written to the database: %s", row.session_id, exc)
            return await self._queue(row), True
        await self._forget(row.session_id)
        reported = self._unsaved_interrupted.pop(row.session_id, None)
        if reported is not None and self._on_interrupted_saved is not None:
            self._on_interrupted_saved([reported])
        return SaveResult.SAVED, False

    async def _queue(self, row: SessionRow) -> SaveResult:
        try:
            await self._run_io(self._outbox.put, row)
        except OSError as exc:
            self._hold(row, f"the outbox cannot be written ({exc})")
            return SaveResult.HELD
        except (TypeError, ValueError) as exc:  # not even JSON can hold it as it is
            return await self._quarantine_row(row, exc)
        self._queued.add(row.session_id)
        self._held.pop(row.session_id, None)
        return SaveResult.QUEUED

    async def _quarantine_row(self, row: SessionRow, exc: BaseException) -> SaveResult:
        reason = f"{type(exc).__name__}: {exc}"
        try:
            path = await self._run_io(self._outbox.quarantine_row, row, reason)
        except OSError as io_exc:
            self._hold(row, f"refused ({reason}) and the quarantine cannot be written ({io_exc})")
            return SaveResult.HELD
        self._queued.discard(row.session_id)
        self._held.pop(row.session_id, None)
        self.rows_quarantined += 1
        log.error("session %s: the database refused the row (%s); kept in %s, not retried",
                  row.session_id, reason, path)
        return SaveResult.QUARANTINED

    def _hold(self, row: SessionRow, why: str) -> None:
        if row.session_id not in self._held and len(self._held) >= self._max_held:
            log.error("session %s: %s, and %d rows are held in memory already; not accepted",
                      row.session_id, why, len(self._held))
            raise RowNotAccepted(f"{why}; {len(self._held)} rows already held in memory")
        self._held[row.session_id] = row
        log.warning("session %s held in memory only: %s", row.session_id, why)

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
        self._held.pop(session_id, None)
        if session_id in self._queued:
            await self._run_io(self._outbox.discard, session_id)
            self._queued.discard(session_id)

    async def _run(self) -> None:
        delay = self._retry_min_s
        while True:
            if not self._queued and not self._held and not self._sweep_needed:
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
            except _StillHeld as exc:
                delay = min(delay * 2, self._retry_max_s)
                log.info("%s; retry in %.1fs", exc, delay)
            except Exception:
                # The writer must outlive any one bad round: rows depend on it.
                self.write_failures += 1
                delay = min(delay * 2, self._retry_max_s)
                log.exception("retrying queued rows failed; retry in %.1fs", delay)
            else:
                delay = self._retry_min_s

    async def _flush(self) -> None:
        """One round: every held and queued row, then the `interrupted` sweep.

        Once the database is found unavailable no more rows are sent to it
        this round, but held rows are still offered to the outbox.
        """
        down: BaseException | None = None
        for session_id in [*self._held, *(s for s in self._queued if s not in self._held)]:
            async with self._writing.hold(session_id):
                row = await self._next_row(session_id)
                if row is None:
                    continue  # superseded by a direct save meanwhile, or corrupt
                queued = session_id not in self._held
                if down is not None:
                    if not queued:
                        await self._queue(row)
                    continue
                result, unavailable = await self._attempt(row, queued=queued)
                if unavailable:
                    down = DatabaseUnavailable(f"session {session_id} not written")
                elif result is SaveResult.SAVED:
                    log.info("session %s written from the %s", session_id,
                             "outbox" if queued else "memory")
        if down is not None:
            raise down
        if self._sweep_needed:
            count = await self._store.mark_interrupted(
                self._server_instance, self._server_run, self._stale_after_s,
                before_commit=self._on_interrupted, after_commit=self._on_interrupted_saved,
            )
            self._sweep_needed = False
            if count:
                log.warning("marked %d abandoned session(s) interrupted", count)
        if self._held:  # refused, and no room to quarantine them yet
            raise _StillHeld(f"{len(self._held)} row(s) held in memory: no room on disk")

    async def _next_row(self, session_id: uuid.UUID) -> SessionRow | None:
        """The newest snapshot waiting for `session_id`; quarantine an unreadable one."""
        held = self._held.get(session_id)
        if held is not None or session_id not in self._queued:
            return held
        try:
            row = await self._run_io(self._outbox.get, session_id)
        except OutboxCorrupt as exc:
            if await self._run_io(self._quarantine_file, exc):
                self.rows_quarantined += 1
                self._queued.discard(session_id)
            return None
        if row is None:
            self._queued.discard(session_id)
        return row

    def _quarantine_file(self, corrupt: OutboxCorrupt) -> bool:
        """Move an unreadable outbox file aside (blocking); False if it could not be."""
        try:
            target = self._outbox.quarantine_file(corrupt.path, corrupt.reason)
        except OSError as exc:
            log.error("unreadable outbox file %s (%s) cannot be quarantined: %s",
                      corrupt.path.name, corrupt.reason, exc)
            return False
        log.error("unreadable outbox file %s (%s) moved to %s", corrupt.path.name,
                  corrupt.reason, target)
        return True

    def _recover_outbox(
        self,
    ) -> tuple[list[uuid.UUID], dict[uuid.UUID, SessionRow], int, list[SessionRow]]:
        """Rows this instance left `in_progress` died with it: say so.

        Returns the readable queued ids, the rows to hold in memory (their
        `interrupted` snapshot found no room on disk), how many files were
        quarantined, and the rows now `interrupted`.
        """
        ids: list[uuid.UUID] = []
        held: dict[uuid.UUID, SessionRow] = {}
        quarantined = 0
        interrupted_rows: list[SessionRow] = []
        for session_id in self._outbox.pending():
            try:
                row = self._outbox.get(session_id)
            except OutboxCorrupt as exc:
                quarantined += self._quarantine_file(exc)
                continue
            if row is None:
                continue
            ids.append(session_id)
            if row.status == SessionStatus.IN_PROGRESS.value:
                interrupted = row.with_status(SessionStatus.INTERRUPTED.value)
                interrupted_rows.append(interrupted)
                try:
                    self._outbox.put(interrupted)
                except OSError as exc:
                    log.warning("session %s held in memory only: %s", session_id, exc)
                    held[session_id] = interrupted
        return ids, held, quarantined, interrupted_rows

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
