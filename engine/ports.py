"""The seams between the engine and the models, voices and stores behind it.

Each Protocol here is what the engine and the media layer program against;
the implementations that import an SDK or run external code live in
`adapters/` (faster-whisper, ONNX detectors, Silero VAD, Piper/espeak-ng,
Gemini), in `storage/` (the row saver), or in a test as a local fake. The
plain data that crosses a seam and has no other owner lives here too:
`TranscriptResult`, `LlmRequest`, `LlmError`. `Detection` belongs to
`engine.detector` and `Turn` to `engine.session`.

Blocking seams (`Transcriber`, `Detector`, `VadModel`, `Synthesizer`) are
called from executors sized for their model, never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable


from engine.arrays import Float32Array, Int16Array, RgbImage
from engine.detector import Detection
from engine.session import SessionRow, Turn

__all__ = [
    "Detector",
    "InterviewerLlm",
    "LlmError",
    "LlmErrorKind",
    "LlmRequest",
    "RecordingAdmission",
    "RowSaver",
    "Synthesizer",
    "SynthesizerUnavailable",
    "TranscriptResult",
    "BatchTranscriber",
    "Transcriber",
    "TurnModel",
    "VadModel",
]


# --- speech to text -----------------------------------------------------------


@dataclass(frozen=True)
class TranscriptResult:
    """Text of one piece of audio and what it cost to get it."""

    text: str
    audio_s: float
    elapsed_s: float
    language: str | None = None
    # How it was decoded (e.g. "pad30", "fit+3s/0.02s>=0s"); None: not said.
    decoding: str | None = None


class Transcriber(Protocol):
    """Blocking speech-to-text on 16 kHz mono float32 audio."""

    def transcribe(self, audio: Float32Array) -> TranscriptResult:
        """Transcribe the whole of `audio`; runs in the caller's thread."""
        ...


@runtime_checkable
class BatchTranscriber(Transcriber, Protocol):
    """A transcriber that can also decode several pieces of at most 30 s in one pass.

    `max_batch` is how many pieces a batch may usefully hold now (1: batching
    does not pay, e.g. when every piece is padded to 30 s anyway).
    """

    @property
    def max_batch(self) -> int: ...

    def transcribe_batch(self, pieces: list[Float32Array]) -> list[TranscriptResult]:
        """One result per piece, in order; runs in the caller's thread."""
        ...


# --- voice activity -------------------------------------------------------------


class VadModel(Protocol):
    """A stateless voice-activity network shared by every stream (thread-safe `run`)."""

    def run(
        self, inputs: Float32Array, h: Float32Array, c: Float32Array
    ) -> tuple[Float32Array, Float32Array, Float32Array]:
        """Speech probabilities of consecutive [n, 64+512] windows, and the next (h, c).

        The rows are one sequence: the LSTM state flows from row to row and
        the returned (h, c) continue after the last one.
        """
        ...


# --- proctoring -----------------------------------------------------------------


class TurnModel(Protocol):
    """Blocking end-of-turn classifier on 16 kHz mono float32 audio.

    `probability(audio)`: P(the speaker has finished their turn), from the
    audio of the turn so far, silence included (at most a few seconds: the
    model keeps the end). Thread-safe: one model serves every session.
    """

    def probability(self, audio: Float32Array) -> float: ...


class Detector(Protocol):
    """Anything that finds COCO objects in an RGB frame."""

    def detect(self, rgb: RgbImage) -> list[Detection]:
        """Objects in an H×W×3 ``uint8`` RGB image of any size, best first."""
        ...


# --- the interviewer's voice -------------------------------------------------------


class SynthesizerUnavailable(RuntimeError):
    """The requested text-to-speech engine is not installed or has no voice."""


class Synthesizer(Protocol):
    """Blocking text to speech; one sentence per call, run in a worker thread."""

    sample_rate: int

    def synthesize(self, text: str) -> Int16Array:
        """Speak `text` as int16 mono PCM at `sample_rate` (empty if nothing to say)."""
        ...


# --- the interviewer's language model ---------------------------------------------

LlmErrorKind = Literal[
    "rate_limited",  # HTTP 429
    "server_error",  # HTTP 5xx, or an error event in the stream
    "client_error",  # other HTTP 4xx: bad key, bad request, unknown model
    "timeout",  # no first text in time, reply not done in time, HTTP 408
    "stream_error",  # the connection or stream broke, or a malformed answer
    "connection_error",  # could not connect at all
    "empty_response",  # finished without any text (e.g. blocked by safety)
]


@dataclass(frozen=True)
class LlmRequest:
    """Everything one model call needs: instructions, conversation, limits."""

    system: str
    history: list[Turn]
    max_output_tokens: int = 300
    temperature: float = 0.4

    def __post_init__(self) -> None:
        if self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {self.max_output_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")


class LlmError(Exception):
    """A model call failed; `kind` classifies it, `message` explains it."""

    def __init__(self, kind: LlmErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: LlmErrorKind = kind
        self.message = message


class InterviewerLlm(Protocol):
    """A chat model that streams the interviewer's next reply.

    Every failure surfaces as `LlmError`, and every call ends within the
    implementation's timeouts, so the interviewer can always fall back.
    `complete` serves the one non-streaming call, the final report.
    """

    provider: str
    model: str

    def stream(self, request: LlmRequest) -> AsyncIterator[str]:
        """Yield the reply as text deltas; raise only `LlmError`."""
        ...

    async def complete(self, request: LlmRequest) -> str:
        """The whole reply at once; raise only `LlmError`."""
        ...


# --- persistence --------------------------------------------------------------------


class RecordingAdmission(Protocol):
    """Whether a new recording may start (e.g. enough free disk)."""

    def admit_recording(self, what: str) -> bool: ...


class RowSaver(Protocol):
    """Where the session registry stores rows (the storage layer's writer)."""

    async def save(self, row: SessionRow) -> str:
        """Store `row` (insert or update by session id); returns what happened."""
        ...
