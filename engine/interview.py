"""One interview's life, from invitation to report.

An `Interview` owns everything that belongs to one interview and must outlive
a single connection: the session record (what is stored), the conversation
state, the anomaly rules (an episode in progress is not recorded twice after
a rejoin), the recording handle, and the interview's state:

    WAITING --call--> LIVE --drop--> ENDING --> PARKED --rejoin--> WAITING
       |                |                         |
       +------end-------+--end--> ENDING --> ENDED <--grace over--+

The media layer makes one call object per connection and attaches it with
`attach()`; a rejoin is a new call on the same `Interview`. `finish()` builds
the report. The interview table (`engine.registry`) decides when states
change and saves the rows.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.anomaly import AnomalyRules
from engine.conversation import ConversationState
from engine.interviewer import (
    GeminiInterviewer,
    InterviewerEngine,
    InterviewPlan,
    StructuredInterviewer,
    default_plan,
)
from engine.ports import InterviewerLlm
from engine.report import AnswerRecord, build_report, evaluate
from engine.session import InterviewSession, SessionRow, SessionStatus, utc_now

__all__ = [
    "Call",
    "Interview",
    "InterviewState",
    "InterviewerSettings",
    "Recording",
    "new_conversation",
]


class InterviewState(enum.Enum):
    WAITING = "waiting"  # invited, or rejoined: no call connected yet
    LIVE = "live"  # a call is attached
    ENDING = "ending"  # its call is closing and the final row is being saved
    PARKED = "parked"  # the call dropped: saved, but a new call may continue it
    ENDED = "ended"  # saved for good; gone from the table


class Call(Protocol):
    """One connection's media (the media layer's object)."""

    async def close(self) -> None: ...


class Recording(Protocol):
    """One interview's recording, continued across calls."""

    @property
    def frames_dropped(self) -> int: ...

    async def close(self) -> object: ...


@dataclass
class Interview:
    record: InterviewSession
    rules: AnomalyRules
    conversation: ConversationState | None = None
    recording: Recording | None = None
    call: Call | None = None
    state: InterviewState = InterviewState.WAITING
    # What the checkpointer needs: the record's version and when it was saved.
    saved_version: int | None = None
    saved_at: float = 0.0
    ending: asyncio.Task[str] | None = field(default=None, repr=False)
    rejoin_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # A call is being set up (models loading, offer being answered).
    connecting: bool = False
    final_status: SessionStatus = SessionStatus.COMPLETED

    @property
    def session_id(self) -> uuid.UUID:
        return self.record.session_id

    @property
    def is_live(self) -> bool:
        """Waiting for or holding a call: checkpointed, may be joined."""
        return self.state in (InterviewState.WAITING, InterviewState.LIVE)

    @property
    def has_call(self) -> bool:
        return self.call is not None or self.connecting

    def attach(self, call: Call) -> None:
        """A call connected: the interview is live (and started, the first time)."""
        self.call = call
        self.connecting = False
        self.state = InterviewState.LIVE
        self.record.start_time = self.record.start_time or utc_now()
        self.record.touch()

    def detach(self) -> Call | None:
        call, self.call = self.call, None
        return call

    def row(self, status: SessionStatus | None = None) -> SessionRow:
        """The row to store: by default `scheduled` until the first call, then
        `in_progress`."""
        if status is None:
            started = self.record.start_time is not None
            status = SessionStatus.IN_PROGRESS if started else SessionStatus.SCHEDULED
        if self.conversation is not None:
            self.record.interviewer_state = self.conversation.snapshot(time.monotonic())
        return self.record.to_row(status)

    def close_record(self) -> None:
        """The end of this stretch of the interview (a drop may be rejoined)."""
        self.record.end_time = self.record.end_time or utc_now()
        self.record.touch()

    def reopen(self) -> None:
        """A rejoin: the same row continues."""
        if self.rejoin_timer is not None:
            self.rejoin_timer.cancel()
            self.rejoin_timer = None
        self.state = InterviewState.WAITING
        self.record.end_time = None
        self.record.touch()

    def finish(self, evaluation: dict[str, Any] | None = None) -> None:
        """Build the report from the conversation so far (after each call).

        The model's evaluation, when there is one, is added later by
        `evaluate()`: the row must not wait for it.
        """
        state = self.conversation
        if state is None:
            return
        record = self.record
        answers = [AnswerRecord(q.question, tuple(q.answers), q.speech_s)
                   for _, q in sorted(state.questions.items())]
        engine = state.engine
        gemini = self._gemini()
        record.interview_report = build_report(
            answers,
            record.anomalies_detected,
            candidate_talk_s=sum(a.speech_s for a in answers),
            interviewer_talk_s=state.interviewer_audio_s,
            provider=engine.provider,
            model=engine.model,
            evaluation=evaluation,
        )
        if gemini is not None and gemini.errors:
            record.extra_information["llm_errors"] = list(gemini.errors[-20:])
        record.touch()

    @property
    def evaluable(self) -> bool:
        """The interviewer's model can score this interview's answers."""
        return self._gemini() is not None and any(
            t.role == "user" for t in self.record.conversation_history)

    async def evaluate(self) -> None:
        """Add the model's evaluation to the report (seconds; once it is over)."""
        gemini = self._gemini()
        if gemini is None or not self.evaluable:
            return
        history = list(self.record.conversation_history)
        self.finish(await evaluate(gemini.llm, self.record.job_role, history))

    def _gemini(self) -> GeminiInterviewer | None:
        engine = None if self.conversation is None else self.conversation.engine
        return engine if isinstance(engine, GeminiInterviewer) else None


@dataclass(frozen=True)
class InterviewerSettings:
    """How the AI interviewer presents itself (`INTERVIEWER_*` settings)."""

    name: str
    greeting: str | None
    max_minutes: float


def new_conversation(
    record: InterviewSession, settings: InterviewerSettings, llm: InterviewerLlm | None
) -> ConversationState:
    """The conversation state of a new interview: its plan, worded by `llm` if any."""
    plan = InterviewPlan(
        record.job_role,
        tuple(record.questions) or default_plan(record.job_role).questions,
        interviewer_name=settings.name,
        greeting=settings.greeting,
        max_minutes=settings.max_minutes,
        resume_text=record.resume_text,
    )
    engine: InterviewerEngine = StructuredInterviewer(plan)
    if llm is not None:
        engine = GeminiInterviewer(StructuredInterviewer(plan), llm)
    return ConversationState(engine)
