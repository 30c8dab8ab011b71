"""The test kit: what the tests, the load generator and the benchmarks share.

Shipped with the server (unlike `tests/`), so an installed copy can load-test
itself: a simulated candidate (a real aiortc peer with paced tracks), the
server as a process, word error rate, a local Gemini stand-in and an
embedded PostgreSQL. Data files are the caller's: every path is an argument.
"""

from testing.candidate import Candidate, SignalingFailed
from testing.database import EmbeddedDatabase, start_database
from testing.ear import InterviewerEar
from testing.events import Event, EventLog
from testing.gemini_stub import Chunk, Drop, Fail, GeminiStub, Recorded, Reply, Script, Stall, chunks
from testing.process import SERVER_SCRIPT, ServerExited, ServerProcess, parse_serving_url, start_server
from testing.tracks import (
    CameraTrack,
    EncodedClip,
    MicrophoneTrack,
    PhotoTrack,
    ScriptedSpeech,
    SpeechClip,
    SpeechTrack,
    Utterance,
    read_wav,
    transcript_of,
)
from testing.wer import normalise, wer, word_errors

__all__ = [
    "SERVER_SCRIPT",
    "CameraTrack",
    "Candidate",
    "Chunk",
    "Drop",
    "EmbeddedDatabase",
    "EncodedClip",
    "Event",
    "EventLog",
    "Fail",
    "GeminiStub",
    "InterviewerEar",
    "MicrophoneTrack",
    "PhotoTrack",
    "Recorded",
    "Reply",
    "Script",
    "ScriptedSpeech",
    "ServerExited",
    "ServerProcess",
    "SignalingFailed",
    "SpeechClip",
    "SpeechTrack",
    "Stall",
    "Utterance",
    "chunks",
    "normalise",
    "parse_serving_url",
    "read_wav",
    "start_database",
    "start_server",
    "transcript_of",
    "wer",
    "word_errors",
]
