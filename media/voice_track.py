"""The interviewer's voice: text → speech → a paced outgoing WebRTC audio track.

`InterviewerTrack` is the server's outgoing audio: 20 ms frames of 48 kHz
mono, paced in real time, silence when there is nothing to say.
`InterviewerVoice` synthesizes sentence by sentence in its own executor
(the next sentence is synthesized while the previous one plays) and can be
interrupted at once for a barge-in: queued audio is dropped, so the track
falls silent within one frame. A reply's first sentence starts at its first
sound: the synthesizer's leading silence would only delay it.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from engine.conversation import Spoken
from engine.ports import Synthesizer
from engine.resample import resample_to_48k

__all__ = ["InterviewerTrack", "InterviewerVoice", "trim_leading_silence"]

RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
_SILENCE = np.zeros(FRAME_SAMPLES, np.int16)
# A reply's first sentence starts at its first sound, less this much: Piper
# opens each sentence with 30-70 ms of near-silence, heard as latency.
_LEAD_KEEP = RATE // 100  # 10 ms
_LEAD_LEVEL = 0.01  # of the sentence's peak: below it is silence
_LEAD_MAX_CUT = RATE * 8 // 100  # 80 ms at most: a soft first sound is never lost


@dataclass
class _Chunk:
    pcm: np.ndarray
    started: asyncio.Future[float] | None  # first chunk of a sentence
    done: asyncio.Future[bool] | None  # last chunk of a sentence


class InterviewerTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, on_frame: Callable[[av.AudioFrame], None] | None = None) -> None:
        super().__init__()
        self._chunks: deque[_Chunk] = deque()
        self._on_frame = on_frame
        self._start: float | None = None
        self._samples = 0
        self.frames_sent = 0
        self.voiced_frames_sent = 0

    def enqueue(self, pcm: np.ndarray, started: asyncio.Future[float], done: asyncio.Future[bool]) -> None:
        """Queue one sentence of 48 kHz mono int16 audio."""
        count = max(1, -(-len(pcm) // FRAME_SAMPLES))
        padded = np.zeros(count * FRAME_SAMPLES, np.int16)
        padded[: len(pcm)] = pcm
        for i in range(count):
            self._chunks.append(_Chunk(
                padded[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES],
                started if i == 0 else None,
                done if i == count - 1 else None,
            ))

    def clear(self) -> None:
        """Drop everything still queued; pending sentences resolve as not played."""
        while self._chunks:
            chunk = self._chunks.popleft()
            if chunk.started is not None and not chunk.started.done():
                chunk.started.set_result(-1.0)
            if chunk.done is not None and not chunk.done.done():
                chunk.done.set_result(False)

    @property
    def pending_s(self) -> float:
        return len(self._chunks) * FRAME_SAMPLES / RATE

    async def recv(self) -> av.AudioFrame:
        await self._pace()
        chunk = self._chunks.popleft() if self._chunks else None
        pcm = _SILENCE if chunk is None else chunk.pcm
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, RATE)
        self.frames_sent += 1
        if chunk is not None:
            self.voiced_frames_sent += 1
            self._settle(chunk)
        if self._on_frame is not None:
            self._on_frame(frame)
        return frame

    async def _pace(self) -> None:
        if self._start is None:
            self._start = time.monotonic()
            return
        self._samples += FRAME_SAMPLES
        delay = self._start + self._samples / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _settle(self, chunk: _Chunk) -> None:
        now = asyncio.get_running_loop().time()
        if chunk.started is not None and not chunk.started.done():
            chunk.started.set_result(now)
        if chunk.done is not None and not chunk.done.done():
            chunk.done.set_result(True)


def _announce_start(
    on_start: Callable[[str], None], sentence: str
) -> Callable[[asyncio.Future[float]], None]:
    def started(future: asyncio.Future[float]) -> None:
        if future.result() > 0:  # -1: dropped before it played (barge-in)
            on_start(sentence)
    return started


@dataclass
class _Queued:
    text: str
    started: asyncio.Future[float]
    done: asyncio.Future[bool]
    audio_s: float


def trim_leading_silence(pcm: np.ndarray) -> np.ndarray:
    """`pcm` from 10 ms before its first sound, cut by 80 ms at most (a view)."""
    level = np.abs(pcm.astype(np.int32))
    loud = np.flatnonzero(level >= max(1, _LEAD_LEVEL * int(level.max(initial=0))))
    if not len(loud):
        return pcm
    return pcm[min(max(0, int(loud[0]) - _LEAD_KEEP), _LEAD_MAX_CUT):]


class InterviewerVoice:
    """`engine.conversation.Voice` over an `InterviewerTrack`."""

    def __init__(
        self,
        track: InterviewerTrack,
        synthesizer: Synthesizer,
        executor: Executor,
        on_synthesized: Callable[[float], None] | None = None,
    ) -> None:
        self._track = track
        self._on_synthesized = on_synthesized
        self._synthesizer = synthesizer
        self._executor = executor
        self._interrupted = False
        self.tts_seconds = 0.0

    def interrupt(self) -> None:
        self._interrupted = True
        self._track.clear()

    async def say(
        self, sentences: AsyncIterator[str], on_start: Callable[[str], None] | None = None
    ) -> Spoken:
        self._interrupted = False
        loop = asyncio.get_running_loop()
        queued: list[_Queued] = []
        async for sentence in sentences:
            if self._interrupted:
                break
            t0 = loop.time()
            pcm = await loop.run_in_executor(self._executor, self._synthesize, sentence,
                                             not queued)
            elapsed = loop.time() - t0
            self.tts_seconds += elapsed
            if self._on_synthesized is not None:
                self._on_synthesized(elapsed)
            if self._interrupted:
                break
            item = _Queued(sentence, loop.create_future(), loop.create_future(), len(pcm) / RATE)
            if on_start is not None:
                item.started.add_done_callback(_announce_start(on_start, sentence))
            self._track.enqueue(pcm, item.started, item.done)
            queued.append(item)
        for item in queued:
            await item.done
        return self._outcome(queued)

    def _synthesize(self, text: str, first: bool) -> np.ndarray:
        pcm = resample_to_48k(self._synthesizer.synthesize(text), self._synthesizer.sample_rate)
        return trim_leading_silence(pcm) if first else pcm

    def _outcome(self, queued: list[_Queued]) -> Spoken:
        played = [q for q in queued if q.done.result()]
        cut = next((q for q in queued if not q.done.result() and q.started.result() > 0), None)
        text = " ".join(q.text for q in played)
        if cut is not None:
            text = f"{text} {cut.text} —".strip()
        first = queued[0].started.result() if queued and queued[0].started.result() > 0 else None
        return Spoken(
            text=text,
            interrupted=self._interrupted,
            first_audio_at=first,
            audio_s=sum(q.audio_s for q in played),
        )
