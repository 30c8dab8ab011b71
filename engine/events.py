"""Every event the server sends a candidate over the data channel, as plain data.

Each event is a frozen dataclass; `media/wire.py` is the one place that turns
them into the JSON the browser client reads (`{"type": "<kind>", ...fields}`)
and parses what the candidate sends back. What the candidate may send is
`Ping` and `EndRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AnomalyEvent",
    "ClientMessage",
    "EndRequest",
    "ErrorEvent",
    "Event",
    "InterviewerEvent",
    "Ping",
    "PongEvent",
    "StateEvent",
    "TranscriptEvent",
]


@dataclass(frozen=True)
class TranscriptEvent:
    """A final transcript of the candidate's speech (seconds on the audio clock)."""

    kind = "transcript"
    text: str
    start: float
    end: float
    final: bool = True


@dataclass(frozen=True)
class InterviewerEvent:
    """A sentence the interviewer starts saying now (captions follow the voice)."""

    kind = "interviewer"
    text: str


@dataclass(frozen=True)
class StateEvent:
    """The interviewer's state: idle, speaking, listening, thinking, ended."""

    kind = "state"
    state: str


@dataclass(frozen=True)
class AnomalyEvent:
    """A proctoring anomaly was recorded (its type is `anomaly`)."""

    kind = "anomaly"
    anomaly: str
    timestamp: str
    count: int
    detections: tuple[str, ...]
    evidence_url: str


@dataclass(frozen=True)
class ErrorEvent:
    kind = "error"
    message: str


@dataclass(frozen=True)
class PongEvent:
    kind = "pong"


Event = TranscriptEvent | InterviewerEvent | StateEvent | AnomalyEvent | ErrorEvent | PongEvent


@dataclass(frozen=True)
class Ping:
    """The candidate's keepalive."""


@dataclass(frozen=True)
class EndRequest:
    """The candidate ends the interview."""


ClientMessage = Ping | EndRequest
