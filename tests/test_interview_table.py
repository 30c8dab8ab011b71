"""The interview table's life cycle: one ending, parking, rejoin, expiry, checkpoints."""

from __future__ import annotations

import asyncio

from engine.interview import InterviewState
from engine.registry import InterviewTable
from engine.session import InterviewSession, SessionRow, SessionStatus


class Rows:
    """A row saver that keeps every row it was given, in order."""

    def __init__(self) -> None:
        self.rows: list[SessionRow] = []

    async def save(self, row: SessionRow) -> str:
        await asyncio.sleep(0)
        self.rows.append(row)
        return "saved"


class SlowCall:
    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        await asyncio.sleep(0.05)
        self.closed += 1


def table(rows: Rows, **kwargs: float) -> InterviewTable:
    options = {"checkpoint_s": 3600.0, "heartbeat_s": 3600.0, **kwargs}
    return InterviewTable(rows, **options)  # type: ignore[arg-type]


async def test_racing_ends_close_the_call_once_and_save_the_final_row_once_per_stage():
    rows, call = Rows(), SlowCall()
    interviews = table(rows)
    session = InterviewSession(job_role="Welder")
    await interviews.add(session)
    interview = interviews.interview(session.session_id)
    assert interview is not None and interview.state is InterviewState.WAITING
    interview.attach(call)
    assert interview.state is InterviewState.LIVE and session.start_time is not None
    results = await asyncio.gather(*(interviews.end(session.session_id) for _ in range(3)))
    assert results == ["saved"] * 3
    assert call.closed == 1
    # Created; ended (before the call drained); after the drain.
    assert [r.status for r in rows.rows] == ["scheduled", "completed", "completed"]
    assert interviews.interview(session.session_id) is None  # gone for good
    assert interview.state is InterviewState.ENDED and interview.call is None


async def test_a_dropped_call_parks_the_interview_until_rejoined_or_expired():
    rows = Rows()
    forgotten: list[object] = []
    interviews = table(rows, rejoin_grace_s=0.2)
    interviews.on_forget.append(forgotten.append)
    first, second = InterviewSession(job_role="A"), InterviewSession(job_role="B")
    for session in (first, second):
        await interviews.add(session)
        interviews.end_soon(session.session_id, rejoinable=True)
        await interviews.wait_ended(session.session_id)
        assert interviews.parked(session.session_id) is session
        assert interviews.get(session.session_id) is None and len(interviews) == 0
    assert rows.rows[-1].end_time is not None
    assert interviews.rejoin(first.session_id) is first
    assert interviews.get(first.session_id) is first and first.end_time is None
    await asyncio.sleep(0.4)  # the second one's window closes
    assert interviews.parked(second.session_id) is None
    assert [i.record for i in forgotten] == [second]  # type: ignore[attr-defined]
    assert interviews.get(first.session_id) is first  # the rejoined one is not expired


async def test_checkpoints_save_changed_live_interviews_only():
    rows = Rows()
    interviews = table(rows, checkpoint_s=0.05)
    live, ended = InterviewSession(job_role="A"), InterviewSession(job_role="B")
    await interviews.add(live)
    await interviews.add(ended)
    await interviews.end(ended.session_id, SessionStatus.INTERRUPTED)
    await interviews.start()
    try:
        saved = len(rows.rows)
        await asyncio.sleep(0.2)
        assert len(rows.rows) == saved  # nothing changed
        live.add_turn("assistant", "Hello.")
        await asyncio.sleep(0.2)
    finally:
        await interviews.close()
    later = rows.rows[saved:]
    assert [r.session_id for r in later] == [live.session_id]
    assert later[0].status == "scheduled"  # changed, but nobody joined yet
    assert interviews.checkpoints == 1


async def test_end_all_ends_live_and_forgets_parked_interviews():
    rows, call = Rows(), SlowCall()
    interviews = table(rows, rejoin_grace_s=60)
    live, parked = InterviewSession(job_role="A"), InterviewSession(job_role="B")
    for session in (live, parked):
        await interviews.add(session)
    interviews.interview(live.session_id).attach(call)  # type: ignore[union-attr]
    interviews.end_soon(parked.session_id, rejoinable=True)
    await interviews.wait_ended(parked.session_id)
    await interviews.end_all()
    assert call.closed == 1
    assert interviews.all() == []
    assert {r.session_id for r in rows.rows if r.status == "completed"} == {
        live.session_id, parked.session_id,
    }


async def test_ending_a_parked_interview_closes_its_rejoin_window():
    rows = Rows()
    interviews = table(rows, rejoin_grace_s=60)
    session = InterviewSession(job_role="A")
    await interviews.add(session)
    interviews.end_soon(session.session_id, rejoinable=True)
    await interviews.wait_ended(session.session_id)
    assert interviews.parked(session.session_id) is session
    assert await interviews.end(session.session_id) == "saved"
    assert interviews.parked(session.session_id) is None
    assert interviews.rejoin(session.session_id) is None
    assert rows.rows[-1].status == "completed" and rows.rows[-1].end_time is not None


class HeldCall:
    """A call whose close waits until the test lets it finish (a long drain)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def close(self) -> None:
        await self.release.wait()


async def test_the_final_status_is_saved_before_the_call_drains():
    rows, call = Rows(), HeldCall()
    interviews = table(rows)
    session = InterviewSession(job_role="A")
    await interviews.add(session)
    interviews.interview(session.session_id).attach(call)  # type: ignore[union-attr]
    ending = asyncio.create_task(interviews.end(session.session_id))
    await asyncio.sleep(0.1)
    assert not ending.done()  # still draining...
    assert rows.rows[-1].status == "completed"  # ...but the row is closed already
    assert rows.rows[-1].end_time is not None
    assert rows.rows[-1].session_information["closing"] is True  # type: ignore[index]
    session.add_turn("user", "The last words, heard while draining.")
    call.release.set()
    assert await ending == "saved"
    final = rows.rows[-1].session_information
    assert final is not None and final["conversation_history"][-1]["role"] == "user"
    assert "closing" not in final


async def test_an_invitation_nobody_joined_is_not_refreshed_and_outlives_shutdown():
    rows = Rows()
    interviews = table(rows, checkpoint_s=0.05, heartbeat_s=0.05)
    invited, joined = InterviewSession(job_role="A"), InterviewSession(job_role="B")
    for session in (invited, joined):
        await interviews.add(session)
    interviews.interview(joined.session_id).attach(SlowCall())  # type: ignore[union-attr]
    await interviews.start()
    try:
        await asyncio.sleep(0.4)
    finally:
        await interviews.close()
    saved = [r.session_id for r in rows.rows]
    assert saved.count(invited.session_id) == 1  # its first row only: no heartbeat
    assert saved.count(joined.session_id) >= 3  # refreshed while live
    assert rows.rows[0].status == "scheduled"
    await interviews.end_all()
    last = {r.session_id: r.status for r in rows.rows}
    assert last == {invited.session_id: "scheduled", joined.session_id: "completed"}
