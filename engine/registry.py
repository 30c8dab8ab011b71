"""The live sessions of this process, their checkpoints and their ending.

The registry owns every live `InterviewSession`. It saves through a
`RowSaver` (the storage layer's writer), checkpoints changed sessions every
`checkpoint_s`, and ends a session exactly once however many paths (REST call,
track close, keepalive timeout, shutdown) race to end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

from engine.aio import cancel_and_wait
from engine.ports import RowSaver
from engine.session import InterviewSession, SessionStatus, utc_now

__all__ = ["SessionRegistry"]

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[None]]


class SessionRegistry:
    def __init__(
        self,
        saver: RowSaver,
        *,
        checkpoint_s: float,
        heartbeat_s: float,
        rejoin_grace_s: float = 0.0,
    ) -> None:
        self._saver = saver
        self._rejoin_grace_s = rejoin_grace_s
        # Sessions whose candidate dropped: saved as ended, but a new offer within
        # the grace window reopens them (same row, same interview).
        self._parked: dict[uuid.UUID, tuple[InterviewSession, asyncio.TimerHandle]] = {}
        self.on_forget: list[Callable[[uuid.UUID], None]] = []
        self._checkpoint_s = checkpoint_s
        self._heartbeat_s = heartbeat_s
        self._live: dict[uuid.UUID, InterviewSession] = {}
        self._saved_version: dict[uuid.UUID, int] = {}
        self._saved_at: dict[uuid.UUID, float] = {}
        self._closers: dict[uuid.UUID, list[Closer]] = {}
        self._ending: dict[uuid.UUID, asyncio.Task[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.checkpoints = 0

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[InterviewSession]:
        return iter(list(self._live.values()))

    def get(self, session_id: uuid.UUID) -> InterviewSession | None:
        return self._live.get(session_id)

    async def add(self, session: InterviewSession) -> str:
        """Make `session` live and store its first row."""
        self._live[session.session_id] = session
        return await self.save(session)

    async def wait_ended(self, session_id: uuid.UUID) -> None:
        """If the session is being ended right now, wait until that is done."""
        task = self._ending.get(session_id)
        if task is not None:
            await asyncio.wait({task})

    def parked(self, session_id: uuid.UUID) -> InterviewSession | None:
        """A session that ended by a dropped connection and may still be rejoined."""
        entry = self._parked.get(session_id)
        return None if entry is None else entry[0]

    def rejoin(self, session_id: uuid.UUID) -> InterviewSession | None:
        """Reopen a parked session: live again, the same row."""
        entry = self._parked.pop(session_id, None)
        if entry is None:
            return None
        session, timer = entry
        timer.cancel()
        session.end_time = None
        session.touch()
        self._live[session_id] = session
        log.info("session %s rejoined", session_id)
        return session

    def add_closer(self, session_id: uuid.UUID, closer: Closer) -> None:
        """Run `closer` (e.g. close the peer connection) when the session ends."""
        self._closers.setdefault(session_id, []).append(closer)

    def remove_closer(self, session_id: uuid.UUID, closer: Closer) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._closers[session_id].remove(closer)

    async def save(self, session: InterviewSession) -> str:
        """Checkpoint a live session as `in_progress`."""
        version = session.version
        result = await self._saver.save(session.to_row(SessionStatus.IN_PROGRESS))
        self._saved_version[session.session_id] = version
        self._saved_at[session.session_id] = time.monotonic()
        return str(result)

    async def end(
        self, session_id: uuid.UUID, status: SessionStatus = SessionStatus.COMPLETED
    ) -> str | None:
        """End a live session once: close its media, save the final row.

        Returns the save result, or None if the session was not live. Callers
        racing to end the same session all wait for the one ending.
        """
        self.end_soon(session_id, status)
        task = self._ending.get(session_id)
        if task is None:
            return None
        return await asyncio.shield(task)

    def end_soon(
        self,
        session_id: uuid.UUID,
        status: SessionStatus = SessionStatus.COMPLETED,
        *,
        rejoinable: bool = False,
    ) -> None:
        """Start ending a live session without waiting (callbacks, watchdogs)."""
        if session_id not in self._ending and session_id in self._live:
            session = self._live[session_id]
            task = asyncio.create_task(
                self._end(session, status, rejoinable), name=f"end-{session_id}"
            )
            task.add_done_callback(_log_failure)
            self._ending[session_id] = task

    async def end_all(self) -> None:
        """End every live session (shutdown); parked ones are already saved."""
        for session_id in list(self._parked):
            self._parked.pop(session_id)[1].cancel()
            self._forget(session_id)
        for session in self:
            self.end_soon(session.session_id)
        # Sessions already ending (an "end" just before the signal) are waited
        # for too: the shared clients and executors close after this.
        results = await asyncio.gather(*self._ending.values(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("ending a session at shutdown failed: %r", result)
        for session_id in list(self._parked):  # parked by the endings just awaited
            self._parked.pop(session_id)[1].cancel()
            self._forget(session_id)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._checkpoint_loop(), name="checkpointer")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _end(self, session: InterviewSession, status: SessionStatus, rejoinable: bool) -> str:
        session_id = session.session_id
        # Out of the live set first: no checkpoint or live save may follow
        # (and so overwrite) the final row.
        self._live.pop(session_id, None)
        try:
            for closer in reversed(self._closers.pop(session_id, [])):
                try:
                    await closer()
                except Exception:
                    log.exception("session %s: closing media failed", session_id)
            session.end_time = session.end_time or utc_now()
            session.touch()
            return str(await self._saver.save(session.to_row(status)))
        finally:
            self._saved_version.pop(session_id, None)
            self._saved_at.pop(session_id, None)
            self._ending.pop(session_id, None)
            if rejoinable and self._rejoin_grace_s > 0:
                timer = asyncio.get_running_loop().call_later(
                    self._rejoin_grace_s, self._expire, session_id
                )
                self._parked[session_id] = (session, timer)
            else:
                self._forget(session_id)

    def _expire(self, session_id: uuid.UUID) -> None:
        if self._parked.pop(session_id, None) is not None:
            log.info("session %s: rejoin window closed", session_id)
            self._forget(session_id)

    def _forget(self, session_id: uuid.UUID) -> None:
        for callback in self.on_forget:
            callback(session_id)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_s)
            for session in self:
                if self._needs_checkpoint(session):
                    try:
                        await self.save(session)
                        self.checkpoints += 1
                    except Exception:
                        log.exception("session %s: checkpoint failed", session.session_id)

    def _needs_checkpoint(self, session: InterviewSession) -> bool:
        sid = session.session_id
        if sid not in self._live:
            return False  # ended while this round of checkpoints ran
        if self._saved_version.get(sid) != session.version:
            return True
        # Refresh unchanged rows too, so other instances never take a quiet
        # live session for an abandoned one.
        return time.monotonic() - self._saved_at.get(sid, 0.0) >= self._heartbeat_s


def _log_failure(task: asyncio.Task[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("ending %s failed", task.get_name(), exc_info=task.exception())
