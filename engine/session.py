"""The interview session as plain data: what is live in memory and what is stored.

`InterviewSession` is the mutable, in-memory state of one interview. Every
mutation bumps `version`, so the checkpointer can tell which sessions changed
since their last save. `SessionRow` is the immutable snapshot written to the
`interview_sessions` table: exactly its columns, nothing else.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = [
    "InterviewSession",
    "Role",
    "SessionRow",
    "SessionStatus",
    "Turn",
    "utc_now",
]


ANSWER_IN_PROGRESS = "answer_in_progress"  # session_information key
INVITATION = "invitation"  # session_information key, while the candidate has not joined
# session_information key once joined: what another node needs to go on with
# the interview (the token's digest, the plan, the interviewer's state).
CONTINUATION = "continuation"
# session_information key, true while an ended interview's call still drains:
# the row already has its final status; the last answer and the report follow.
CLOSING = "closing"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class SessionStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # invited; the candidate has not joined yet
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    EXPIRED = "expired"  # the invitation ran out before the candidate joined


Role = Literal["assistant", "user"]


@dataclass(frozen=True)
class Turn:
    """One real turn of the conversation: never a system prompt.

    The one turn type: the stored history and every LLM request use it.
    `offset_s` and `end_offset_s` place it on the interview's timeline
    (`SessionClock`): seconds from the start of the recording.
    """

    role: Role  # the interviewer ("assistant") or the candidate ("user")
    content: str
    offset_s: float | None = field(default=None, compare=False)
    end_offset_s: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.role not in ("assistant", "user"):
            raise ValueError(f"role must be 'assistant' or 'user', got {self.role!r}")

    def to_json(self) -> dict[str, Any]:
        """The seed's `{"role", "content"}`, with the offsets beside them when known."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.offset_s is not None:
            data["offset_s"] = self.offset_s
        if self.end_offset_s is not None:
            data["end_offset_s"] = self.end_offset_s
        return data


@dataclass
class SessionClock:
    """The one timeline of an interview: second 0 is the recording's first frame.

    Transcript lines, interviewer turns and anomalies are stamped on it, so a
    reviewer's player, transcript and flags line up. Times are
    `time.monotonic()` (the event loop's clock); a rejoin keeps the clock,
    as it keeps the recording, so offsets go on from where they were.
    """

    origin: float | None = None

    def start(self, at: float) -> float:
        """Second 0 is `at` unless the clock already runs; the origin."""
        if self.origin is None:
            self.origin = at
        return self.origin

    def offset(self, at: float) -> float:
        """Seconds from second 0 to `at` (the clock starts at `at` if it has not yet)."""
        return round(max(0.0, at - self.start(at)), 3)


@dataclass(frozen=True)
class SessionRow:
    """One row of `interview_sessions`, column for column."""

    session_id: uuid.UUID
    status: str
    interviewee_id: uuid.UUID | None = None
    template_id: uuid.UUID | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    session_information: dict[str, Any] | None = None
    interview_report: dict[str, Any] | None = None
    recording_url: str | None = None
    resume_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON, keyed by the table's column names."""
        return {
            "session_id": str(self.session_id),
            "interviewee_id": _str_or_none(self.interviewee_id),
            "template_id": _str_or_none(self.template_id),
            "start_time": _iso_or_none(self.start_time),
            "end_time": _iso_or_none(self.end_time),
            "status": self.status,
            "session_information": self.session_information,
            "Interview_report": self.interview_report,
            "recording_url": self.recording_url,
            "resume_url": self.resume_url,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRow:
        """Inverse of `to_json` (used by the durable outbox)."""
        return cls(
            session_id=uuid.UUID(data["session_id"]),
            status=data["status"],
            interviewee_id=_uuid_or_none(data.get("interviewee_id")),
            template_id=_uuid_or_none(data.get("template_id")),
            start_time=_datetime_or_none(data.get("start_time")),
            end_time=_datetime_or_none(data.get("end_time")),
            session_information=data.get("session_information"),
            interview_report=data.get("Interview_report"),
            recording_url=data.get("recording_url"),
            resume_url=data.get("resume_url"),
        )

    def with_status(self, status: str) -> SessionRow:
        return replace(self, status=status)


@dataclass
class InterviewSession:
    """The live state of one interview."""

    job_role: str
    session_id: uuid.UUID = field(default_factory=uuid.uuid4)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    template_id: uuid.UUID | None = None
    interviewee_id: uuid.UUID | None = None
    questions: list[str] = field(default_factory=list)
    resume_text: str = field(default="", repr=False)
    resume_url: str | None = None
    recording_url: str | None = None
    created_at: datetime = field(default_factory=utc_now)
    start_time: datetime | None = None
    end_time: datetime | None = None
    asr_model: str | None = None
    asr_decoding: str | None = None  # how the pieces were decoded ("pad30", "fit+3s/...")
    llm_provider: str | None = None
    llm_model: str | None = None
    server_instance: str | None = None
    server_run: str | None = None
    conversation_history: list[Turn] = field(default_factory=list)
    anomalies_detected: list[dict[str, Any]] = field(default_factory=list)
    # Why the interviewer answered when it did, per turn (engine/turns.py).
    turn_decisions: list[dict[str, Any]] = field(default_factory=list)
    interview_report: dict[str, Any] | None = None
    extra_information: dict[str, Any] = field(default_factory=dict)
    invite_expires_at: datetime | None = None
    # Only this digest of the token is stored (for invitations that must
    # survive a restart); the token itself exists in the join URL alone.
    token_sha256: str = field(default="", repr=False)
    clock: SessionClock = field(default_factory=SessionClock, repr=False)
    # The interviewer's state (`ConversationState.snapshot`), saved with each
    # checkpoint so that another node can go on after this one died.
    interviewer_state: dict[str, Any] | None = None
    version: int = 0

    def __post_init__(self) -> None:
        if self.token and not self.token_sha256:
            self.token_sha256 = _sha256(self.token)

    def token_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(
            _sha256(given).encode(), self.token_sha256.encode())

    def invitation_expired(self, now: datetime) -> bool:
        expires = self.invite_expires_at
        return self.start_time is None and expires is not None and now >= expires

    def touch(self) -> None:
        """Mark the session changed since its last save."""
        self.version += 1

    def add_turn(
        self, role: Role, content: str, *, at: float | None = None, until: float | None = None
    ) -> None:
        """A turn; `at`/`until` (monotonic) are when it began and ended, when known."""
        if role not in ("assistant", "user"):
            raise ValueError(f"role must be 'assistant' or 'user', not {role!r}")
        offset = None if at is None else self.clock.offset(at)
        end = None if until is None else self.clock.offset(until)
        self.conversation_history.append(Turn(role, content, offset, end))
        self.touch()

    def answer_in_progress(self, text: str) -> None:
        """What the candidate has said of an answer not yet taken as a turn.

        Checkpointed with the row, so a crash mid-answer keeps what was heard.
        """
        if text:
            self.extra_information[ANSWER_IN_PROGRESS] = text
        elif self.extra_information.pop(ANSWER_IN_PROGRESS, None) is None:
            return
        self.touch()

    def mark_closing(self, closing: bool) -> None:
        if closing:
            self.extra_information[CLOSING] = True
        else:
            self.extra_information.pop(CLOSING, None)
        self.touch()

    def revise_answer(self, draft: str, final: str) -> bool:
        """Replace the end `draft` of the candidate's last answer with `final`.

        The turn may have been taken on a quick draft transcript; the
        committed one of the same audio, which arrives a moment later, is
        what the record keeps. False when the last answer does not end so.
        """
        for i in range(len(self.conversation_history) - 1, -1, -1):
            turn = self.conversation_history[i]
            if turn.role != "user":
                continue
            if not draft or not turn.content.endswith(draft):
                return False
            self.conversation_history[i] = replace(turn, content=turn.content[: -len(draft)] + final)
            self.touch()
            return True
        return False

    def add_turn_decision(self, record: dict[str, Any]) -> None:
        self.turn_decisions.append(record)
        self.touch()

    def add_anomaly(self, record: dict[str, Any], *, at: float | None = None) -> None:
        """An anomaly episode; `at` (monotonic) is its onset, stamped as `offset_s`."""
        if at is not None:
            record = {**record, "offset_s": self.clock.offset(at)}
        self.anomalies_detected.append(record)
        self.touch()

    def session_information(self) -> dict[str, Any]:
        """The `session_information` jsonb a reviewer reads."""
        started = self.start_time or self.created_at
        info: dict[str, Any] = {
            "date_of_interview": started.isoformat(),
            "job_role": self.job_role,
            "conversation_history": [t.to_json() for t in self.conversation_history],
            "anomalies_detected": list(self.anomalies_detected),
            "resume_url": self.resume_url,
            "recording_url": self.recording_url,
            "asr_model": self.asr_model,
            "asr_decoding": self.asr_decoding,
            "turn_decisions": list(self.turn_decisions),
            "llm_provider": self.llm_provider,
            "llm_model": self.llm_model,
            "server_instance": self.server_instance,
            "server_run": self.server_run,
            "checkpoint_at": utc_now().isoformat(),
        }
        if self.start_time is not None and self.token_sha256:
            # Enough for another node to go on with it (`from_checkpoint`).
            info[CONTINUATION] = {
                "token_sha256": self.token_sha256,
                "questions": list(self.questions),
                "interviewer": self.interviewer_state,
            }
        if self.start_time is None:
            # Enough to restore the invitation after a restart (`from_invitation`).
            info[INVITATION] = {
                "token_sha256": self.token_sha256,
                "created_at": self.created_at.isoformat(),
                "expires_at": _iso_or_none(self.invite_expires_at),
                "questions": list(self.questions),
            }
        info.update(self.extra_information)
        return info

    @classmethod
    def from_invitation(cls, row: SessionRow) -> InterviewSession | None:
        """The invitation a `scheduled` row describes, or None if it holds none."""
        info = row.session_information or {}
        invitation = info.get(INVITATION)
        if row.status != SessionStatus.SCHEDULED or not isinstance(invitation, dict):
            return None
        return cls(
            job_role=str(info.get("job_role") or ""),
            session_id=row.session_id,
            token="",
            token_sha256=str(invitation["token_sha256"]),
            template_id=row.template_id,
            interviewee_id=row.interviewee_id,
            questions=[str(q) for q in invitation.get("questions", [])],
            resume_url=row.resume_url,
            created_at=datetime.fromisoformat(invitation["created_at"]),
            invite_expires_at=_datetime_or_none(invitation.get("expires_at")),
            server_instance=info.get("server_instance"),
        )

    @classmethod
    def from_checkpoint(cls, row: SessionRow) -> InterviewSession | None:
        """The interview an `in_progress` (or `interrupted`) row describes, to go
        on with on this node: its conversation, flags and plan; None if the
        row holds no continuation."""
        info = row.session_information or {}
        saved = info.get(CONTINUATION)
        if row.start_time is None or not isinstance(saved, dict) or not isinstance(
                saved.get("token_sha256"), str):
            return None
        history = []
        for turn in info.get("conversation_history") or []:
            if isinstance(turn, dict) and turn.get("role") in ("assistant", "user"):
                history.append(Turn(turn["role"], str(turn.get("content", "")),
                                    turn.get("offset_s"), turn.get("end_offset_s")))
        interviewer = saved.get("interviewer")
        return cls(
            job_role=str(info.get("job_role") or ""),
            session_id=row.session_id,
            token="",
            token_sha256=saved["token_sha256"],
            template_id=row.template_id,
            interviewee_id=row.interviewee_id,
            questions=[str(q) for q in saved.get("questions") or []],
            resume_url=row.resume_url,
            recording_url=row.recording_url,
            start_time=row.start_time,
            conversation_history=history,
            anomalies_detected=[a for a in info.get("anomalies_detected") or []
                                if isinstance(a, dict)],
            turn_decisions=[d for d in info.get("turn_decisions") or [] if isinstance(d, dict)],
            interviewer_state=interviewer if isinstance(interviewer, dict) else None,
            extra_information={"continued_from": info.get("server_instance")},
        )

    def to_row(self, status: SessionStatus) -> SessionRow:
        """Snapshot the session as the row to store with `status`."""
        return SessionRow(
            session_id=self.session_id,
            status=status.value,
            interviewee_id=self.interviewee_id,
            template_id=self.template_id,
            start_time=self.start_time or self.created_at,
            end_time=self.end_time,
            session_information=self.session_information(),
            interview_report=self.interview_report,
            recording_url=self.recording_url,
            resume_url=self.resume_url,
        )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _str_or_none(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _datetime_or_none(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
