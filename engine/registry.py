"""The interview table: every interview of this process, its checkpoints, its ending.

The table holds one `Interview` per session id, from invitation until it is
saved for good (the only map keyed by session id). It saves through a
`RowSaver` (the storage layer's writer), checkpoints changed live interviews
every `checkpoint_s`, and ends an interview exactly once however many paths
(REST call, call dropped, keepalive timeout, shutdown) race to end it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta

from engine.aio import cancel_and_wait
from engine.anomaly import AnomalyRules, AnomalySettings
from engine.interview import Interview, InterviewState
from engine.ports import RowSaver
from engine.session import InterviewSession, SessionRow, SessionStatus, utc_now

__all__ = ["InterviewTable"]

log = logging.getLogger(__name__)

EVALUATION_GRACE_S = 20.0  # at shutdown, for the model's evaluations still running
# Endings reported to `on_ended`: an invitation that expired unused was no interview.
_REPORTED = (SessionStatus.COMPLETED, SessionStatus.INTERRUPTED)


class InterviewTable:
    def __init__(
        self,
        saver: RowSaver,
        *,
        checkpoint_s: float,
        heartbeat_s: float,
        rejoin_grace_s: float = 0.0,
        anomaly_settings: AnomalySettings | None = None,
        invite_ttl_s: float | None = None,
        on_ended: Callable[[SessionRow], Awaitable[None]] | None = None,
    ) -> None:
        """`on_ended` gets the final row of each interview once it is over for
        good (not while it is parked for a rejoin); shutdown waits for it."""
        self._saver = saver
        self._on_ended = on_ended
        self._invite_ttl = None if invite_ttl_s is None else timedelta(seconds=invite_ttl_s)
        self._checkpoint_s = checkpoint_s
        self._heartbeat_s = heartbeat_s
        self._rejoin_grace_s = rejoin_grace_s
        self._anomaly_settings = anomaly_settings or AnomalySettings()
        self._interviews: dict[uuid.UUID, Interview] = {}
        # Called once an interview is gone for good (saved, not rejoinable).
        self.on_forget: list[Callable[[Interview], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._evaluations: set[asyncio.Task[None]] = set()
        self._reporting: set[asyncio.Task[None]] = set()
        self.checkpoints = 0

    def __len__(self) -> int:
        return sum(1 for _ in self.live())

    def __iter__(self) -> Iterator[InterviewSession]:
        return iter([interview.record for interview in self.live()])

    def live(self) -> list[Interview]:
        """Interviews waiting for or holding a call."""
        return [i for i in self._interviews.values() if i.is_live]

    def all(self) -> list[Interview]:
        """Every interview still in the table, whatever its state."""
        return list(self._interviews.values())

    def interview(self, session_id: uuid.UUID) -> Interview | None:
        return self._interviews.get(session_id)

    def get(self, session_id: uuid.UUID) -> InterviewSession | None:
        """The record of a live interview."""
        interview = self._interviews.get(session_id)
        return interview.record if interview is not None and interview.is_live else None

    async def add(self, session: InterviewSession) -> str:
        """A new interview, waiting for its candidate; its first row (`scheduled`)
        is stored, and the invitation expires after `invite_ttl_s`."""
        if session.invite_expires_at is None and self._invite_ttl is not None:
            session.invite_expires_at = session.created_at + self._invite_ttl
        interview = Interview(session, AnomalyRules(self._anomaly_settings))
        self._interviews[session.session_id] = interview
        return await self._checkpoint(interview)

    def restore(self, session: InterviewSession) -> bool:
        """An invitation from an earlier run of this instance, waiting again.

        Its row is stored already. False if it is here already or expired
        (the next checkpoint round closes expired ones; this one is dropped).
        """
        if session.session_id in self._interviews or session.invitation_expired(utc_now()):
            return False
        interview = Interview(session, AnomalyRules(self._anomaly_settings))
        interview.saved_version, interview.saved_at = session.version, time.monotonic()
        self._interviews[session.session_id] = interview
        return True

    def adopt(self, session: InterviewSession) -> InterviewSession:
        """An interview another node held until it died, continued here: its
        row says where it was (`InterviewSession.from_checkpoint`); the
        candidate's call comes next."""
        existing = self._interviews.get(session.session_id)
        if existing is not None:
            return existing.record
        interview = Interview(session, AnomalyRules(self._anomaly_settings))
        session.touch()  # saved `in_progress` again by the next checkpoint round
        self._interviews[session.session_id] = interview
        log.info("session %s continued here (from %s)", session.session_id,
                 session.extra_information.get("continued_from"))
        return session

    async def wait_ended(self, session_id: uuid.UUID) -> None:
        """If the interview is being ended right now, wait until that is done."""
        interview = self._interviews.get(session_id)
        if interview is not None and interview.ending is not None:
            await asyncio.wait({interview.ending})

    def parked(self, session_id: uuid.UUID) -> InterviewSession | None:
        """An interview whose call dropped and that may still be rejoined."""
        interview = self._interviews.get(session_id)
        parked = interview is not None and interview.state is InterviewState.PARKED
        return interview.record if interview is not None and parked else None

    def rejoin(self, session_id: uuid.UUID) -> InterviewSession | None:
        """Reopen a parked interview: live again, the same row."""
        if self.parked(session_id) is None:
            return None
        interview = self._interviews[session_id]
        interview.reopen()
        log.info("session %s rejoined", session_id)
        return interview.record

    async def save(self, session: InterviewSession) -> str:
        """Checkpoint a live interview as `in_progress`."""
        return await self._checkpoint(self._interviews[session.session_id])

    async def end(
        self, session_id: uuid.UUID, status: SessionStatus = SessionStatus.COMPLETED
    ) -> str | None:
        """End a live interview once: close its call, save the final row.

        Returns the save result, or None if the interview was not live. A
        parked interview's rejoin window closes: nobody may reopen an
        interview that was ended (or deleted) while its candidate was away.
        Callers racing to end the same interview all wait for the one ending.
        """
        interview = self._interviews.get(session_id)
        if interview is not None and interview.state is InterviewState.PARKED:
            interview.final_status = status
            reported = self._forget(interview)
            result = str(await self._saver.save(interview.row(status)))
            await _stored(reported)
            return result
        self.end_soon(session_id, status)
        if interview is None or interview.ending is None:
            return None
        return await asyncio.shield(interview.ending)

    def end_soon(
        self,
        session_id: uuid.UUID,
        status: SessionStatus = SessionStatus.COMPLETED,
        *,
        rejoinable: bool = False,
    ) -> None:
        """Start ending a live interview without waiting (callbacks, watchdogs)."""
        interview = self._interviews.get(session_id)
        if interview is None or not interview.is_live:
            return
        # Not live from here on: no checkpoint may follow (and so overwrite)
        # the final row.
        interview.state = InterviewState.ENDING
        task = asyncio.create_task(
            self._end(interview, status, rejoinable), name=f"end-{session_id}"
        )
        task.add_done_callback(_log_failure)
        interview.ending = task

    async def end_all(self) -> None:
        """End every live interview (shutdown); parked ones are already saved."""
        self._forget_parked()
        for interview in self.live():
            if interview.record.start_time is None and not interview.has_call:
                # Nobody joined yet: the invitation outlives this process
                # (its `scheduled` row is restored at the next start).
                if interview.saved_version != interview.record.version:
                    await self._checkpoint(interview)
                continue
            self.end_soon(interview.session_id)
        # Interviews already ending (an "end" just before the signal) are
        # waited for too: the shared clients and executors close after this.
        endings = [i.ending for i in self._interviews.values() if i.ending is not None]
        results = await asyncio.gather(*endings, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("ending a session at shutdown failed: %r", result)
        self._forget_parked()  # parked by the endings just awaited
        await self._reported()
        if self._evaluations:
            # The rows are saved already; the evaluations get a little longer.
            _, pending = await asyncio.wait(self._evaluations, timeout=EVALUATION_GRACE_S)
            if pending:
                log.warning("shutdown: %d evaluation(s) left unfinished", len(pending))
            await cancel_and_wait(*pending)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._checkpoint_loop(), name="checkpointer")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._reported()

    async def _end(self, interview: Interview, status: SessionStatus, rejoinable: bool) -> str:
        interview.final_status = status
        try:
            # The final status first, in milliseconds: a process killed while
            # the call drains (`docker stop` waits 10 s) leaves a closed row.
            interview.close_record()
            draining = interview.call is not None
            interview.record.mark_closing(draining)
            result = str(await self._saver.save(interview.row(status)))
            if interview.call is not None:
                try:
                    # Still attached while it drains, so its backlog stays visible.
                    await interview.call.close()
                except Exception:
                    log.exception("session %s: closing media failed", interview.session_id)
                interview.detach()
                # Then what the drain added: the last answer, the report.
                interview.record.mark_closing(False)
                result = str(await self._saver.save(interview.row(status)))
            return result
        finally:
            interview.ending = None
            if rejoinable and self._rejoin_grace_s > 0:
                interview.state = InterviewState.PARKED
                interview.rejoin_timer = asyncio.get_running_loop().call_later(
                    self._rejoin_grace_s, self._expire, interview
                )
            else:
                # The caller hears of the end once it is reported too (the
                # webhook event is on disk).
                await _stored(self._forget(interview))

    def _expire(self, interview: Interview) -> None:
        if interview.state is InterviewState.PARKED:
            log.info("session %s: rejoin window closed", interview.session_id)
            self._forget(interview)

    def _forget_parked(self) -> None:
        for interview in self.all():
            if interview.state is InterviewState.PARKED:
                self._forget(interview)

    def _forget(self, interview: Interview) -> asyncio.Task[None] | None:
        """Gone for good; returns the task reporting the end to `on_ended`, if any."""
        if interview.rejoin_timer is not None:
            interview.rejoin_timer.cancel()
            interview.rejoin_timer = None
        interview.state = InterviewState.ENDED
        self._interviews.pop(interview.session_id, None)
        for callback in self.on_forget:
            callback(interview)
        if self._on_ended is not None and interview.final_status in _REPORTED:
            report = asyncio.get_running_loop().create_task(
                self._report_ended(self._on_ended, interview.row(interview.final_status)),
                name=f"ended-{interview.session_id}")
            self._reporting.add(report)
            report.add_done_callback(self._reporting.discard)
        else:
            report = None
        if interview.evaluable:
            # Only once it is over for good: a rejoin never waits for a model.
            task = asyncio.get_running_loop().create_task(
                self._evaluate(interview), name=f"evaluate-{interview.session_id}")
            self._evaluations.add(task)
            task.add_done_callback(self._evaluations.discard)
        return report

    @staticmethod
    async def _report_ended(on_ended: Callable[[SessionRow], Awaitable[None]],
                            row: SessionRow) -> None:
        try:
            await on_ended(row)
        except Exception:
            log.exception("session %s: reporting its end failed", row.session_id)

    async def _reported(self) -> None:
        """Wait for the endings being reported (at shutdown, before what takes them closes)."""
        if self._reporting:
            await asyncio.wait(set(self._reporting))

    async def _evaluate(self, interview: Interview) -> None:
        try:
            await interview.evaluate()
            await self._saver.save(interview.row(interview.final_status))
        except Exception:
            log.exception("session %s: evaluating the interview failed", interview.session_id)

    async def _checkpoint(self, interview: Interview) -> str:
        version = interview.record.version
        result = await self._saver.save(interview.row())
        interview.saved_version = version
        interview.saved_at = time.monotonic()
        return str(result)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_s)
            self._expire_invitations()
            for interview in self.live():
                if self._needs_checkpoint(interview):
                    try:
                        await self._checkpoint(interview)
                        self.checkpoints += 1
                    except Exception:
                        log.exception("session %s: checkpoint failed", interview.session_id)

    def _expire_invitations(self) -> None:
        now = utc_now()
        for interview in self.live():
            if interview.record.invitation_expired(now) and not interview.has_call:
                log.info("session %s: the invitation expired", interview.session_id)
                self.end_soon(interview.session_id, SessionStatus.EXPIRED)

    def _needs_checkpoint(self, interview: Interview) -> bool:
        if not interview.is_live:
            return False  # ended while this round of checkpoints ran
        if interview.saved_version != interview.record.version:
            return True
        # Refresh unchanged `in_progress` rows too, so other instances never
        # take a quiet live interview for an abandoned one. A `scheduled` row
        # (nobody joined yet) is never taken for abandoned: no refresh.
        started = interview.record.start_time is not None
        return started and time.monotonic() - interview.saved_at >= self._heartbeat_s


async def _stored(report: asyncio.Task[None] | None) -> None:
    """Wait for an end being reported; shielded: a cancelled caller leaves it running."""
    if report is not None:
        await asyncio.shield(report)


def _log_failure(task: asyncio.Task[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("ending %s failed", task.get_name(), exc_info=task.exception())
