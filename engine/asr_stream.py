"""Streaming recognition: VAD on the caller's thread, Whisper in an executor.

`StreamingRecognizer.feed` only runs the VAD (one ~60-130 µs model call
per 32 ms window), so the media layer may call it from the event loop.
Each committed piece of speech becomes an `UtteranceJob` in a bounded
queue; `transcribe_jobs` drains that queue through a `Transcriber` in an
executor and yields `TranscriptEvent`s.

Latency from the speaker's last voiced frame to the final transcript is
(end-of-speech silence) + (queue wait) + (transcription of the last piece).
The VAD cuts long answers into pieces of at most `max_segment_ms`, and
earlier pieces are transcribed while the speaker goes on, so that delay
does not grow with the length of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.transcriber import Transcriber
from engine.vad import (
    SileroVadModel,
    SpeechCut,
    SpeechEnded,
    VadEvent,
    VadSettings,
    VoiceActivityDetector,
)

__all__ = [
    "RecognizerSettings",
    "RecognizerStats",
    "StreamingRecognizer",
    "TranscriptEvent",
    "UtteranceJob",
    "transcribe_jobs",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecognizerSettings:
    """VAD settings plus how many committed pieces may wait for the model."""

    vad: VadSettings = field(default_factory=VadSettings)
    max_queued_jobs: int = 8

    def __post_init__(self) -> None:
        if self.max_queued_jobs < 1:
            raise ValueError(f"max_queued_jobs must be >= 1, got {self.max_queued_jobs}")


@dataclass(frozen=True)
class UtteranceJob:
    """One committed piece of speech waiting to be transcribed.

    Times are stream seconds. `detected_at` is `time.monotonic()` when the
    VAD committed the piece and `detect_delay` the stream time that had
    passed since its last voiced frame, so the speaker's last voiced frame
    happened at `detected_at - detect_delay` on the monotonic clock.
    """

    seq: int
    audio: npt.NDArray[np.float32] = field(repr=False)
    start: float
    end: float
    last_voiced_at: float
    utterance_end: bool
    detected_at: float
    detect_delay: float

    @property
    def voiced(self) -> bool:
        """False for a tail piece with no window above the threshold."""
        return self.last_voiced_at > self.start

    def latency(self, now: float) -> float:
        """Seconds from the last voiced frame to `now` (monotonic)."""
        return self.detect_delay + (now - self.detected_at)


@dataclass(frozen=True)
class TranscriptEvent:
    """Final text of one piece; `utterance_end` when the speaker stopped."""

    seq: int
    text: str
    start: float
    end: float
    last_voiced_at: float
    latency: float
    utterance_end: bool
    final: bool = True


@dataclass(frozen=True)
class RecognizerStats:
    """Counters to report periodically (never per frame)."""

    jobs: int
    dropped: int
    queued: int
    stream_time: float


class StreamingRecognizer:
    """VAD plus a bounded queue of utterance jobs for one audio stream.

    `feed`, `flush`, `next_job` and `close` belong to one thread: the
    event loop's, when there is one. When the queue is full the oldest
    job is dropped: the newest speech is what the conversation needs.
    """

    def __init__(
        self, vad_model: SileroVadModel, settings: RecognizerSettings | None = None
    ) -> None:
        self.settings = settings or RecognizerSettings()
        self._vad = VoiceActivityDetector(vad_model, self.settings.vad)
        self._jobs: deque[UtteranceJob] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._seq = 0
        self.dropped = 0

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    def feed(self, pcm: npt.NDArray[np.int16] | npt.NDArray[np.float32]) -> list[VadEvent]:
        """Run the VAD on 16 kHz mono PCM; queue committed pieces.

        Returns the VAD events (e.g. `SpeechStarted` for barge-in). Cost is
        O(len(pcm)); no transcription happens here.
        """
        if self._closed:
            raise RuntimeError("feed() after close()")
        events = self._vad.feed(pcm)
        self._enqueue(events)
        return events

    def flush(self) -> list[VadEvent]:
        """End of input: commit a confirmed utterance still in progress."""
        events = self._vad.flush()
        self._enqueue(events)
        return events

    def stats(self) -> RecognizerStats:
        """Counters so far."""
        return RecognizerStats(
            jobs=self._seq,
            dropped=self.dropped,
            queued=len(self._jobs),
            stream_time=self._vad.stream_time,
        )

    async def next_job(self) -> UtteranceJob | None:
        """The oldest queued job; None once closed and drained."""
        while not self._jobs:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._jobs.popleft()

    def close(self) -> None:
        """No more input; queued jobs are still handed out. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()

    def _enqueue(self, events: list[VadEvent]) -> None:
        now = time.monotonic()
        for event in events:
            if isinstance(event, (SpeechCut, SpeechEnded)):
                self._push(self._job(event, now))

    def _job(self, event: SpeechCut | SpeechEnded, now: float) -> UtteranceJob:
        self._seq += 1
        return UtteranceJob(
            seq=self._seq,
            audio=event.audio,
            start=event.start,
            end=event.end,
            last_voiced_at=event.last_voiced_at,
            utterance_end=isinstance(event, SpeechEnded),
            detected_at=now,
            detect_delay=max(0.0, self._vad.stream_time - event.last_voiced_at),
        )

    def _push(self, job: UtteranceJob) -> None:
        if len(self._jobs) >= self.settings.max_queued_jobs:
            lost = self._jobs.popleft()
            self.dropped += 1
            logger.warning(
                "transcription backlog: dropped job %d (%.1fs of audio), %d dropped so far",
                lost.seq, lost.end - lost.start, self.dropped,
            )
        self._jobs.append(job)
        self._ready.set()


async def transcribe_jobs(
    recognizer: StreamingRecognizer, transcriber: Transcriber, executor: Executor
) -> AsyncIterator[TranscriptEvent]:
    """Transcribe queued jobs in `executor`, in order, until closed and drained.

    Size `executor` for the model (e.g. one worker per model instance). On
    cancellation the running transcription finishes in its thread and its
    result is discarded; the CancelledError propagates. A consumer that may
    stop early should wrap the generator in `contextlib.aclosing`. An error
    from the transcriber propagates too: it is not retried or hidden.
    """
    loop = asyncio.get_running_loop()
    while (job := await recognizer.next_job()) is not None:
        text = ""
        if job.voiced:
            try:
                result = await loop.run_in_executor(executor, transcriber.transcribe, job.audio)
            except asyncio.CancelledError:
                logger.debug("transcription of job %d abandoned", job.seq)
                raise
            text = result.text
        yield TranscriptEvent(
            seq=job.seq,
            text=text,
            start=job.start,
            end=job.end,
            last_voiced_at=job.last_voiced_at,
            latency=job.latency(time.monotonic()),
            utterance_end=job.utterance_end,
        )
