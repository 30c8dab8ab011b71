"""Outgoing tracks that send pre-encoded packets, and the interviewer's ear.

aiortc's `RTCRtpSender` packs an `av.Packet` from `recv()` as it is (the
`MediaPlayer(decode=False)` path) instead of encoding a frame. These tracks
use that path with packets from memory, so a candidate costs a timer, RTP
packing and SRTP, and nothing else. Unlike a `MediaPlayer`, they need no
thread or open file per peer, and speech starts on demand: the microphone
sends silence packets until `say()` queues a clip, as a real one never stops
sending (the server's VAD needs the pause after an answer).

Each track stamps its own timestamps, so switching clips or photos never makes
RTP time go backwards.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from loadtest.media import EncodedClip, SpeechClip

__all__ = ["CameraTrack", "InterviewerEar", "MicrophoneTrack", "Utterance"]

AUDIO_CLOCK = 48_000
VIDEO_CLOCK = 90_000
LATE_S = 0.04  # a packet sent this late means the client itself is behind


class _PacedTrack(MediaStreamTrack):
    """Releases packet n at start + n * frame_s; lateness is measured, not hidden."""

    def __init__(self, frame_s: float, clock_rate: int) -> None:
        super().__init__()
        self._frame_s = frame_s
        self._ticks = round(frame_s * clock_rate)
        self._time_base = fractions.Fraction(1, clock_rate)
        self._start: float | None = None
        self._n = 0
        self.packets_sent = 0
        self.packets_late = 0
        self.max_lag_s = 0.0

    async def _next_slot(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._n * self._frame_s
        if due > now:
            await asyncio.sleep(due - now)
        else:
            self.max_lag_s = max(self.max_lag_s, now - due)
            self.packets_late += now - due > LATE_S
        n = self._n
        self._n += 1
        self.packets_sent += 1
        return n

    def _packet(self, payload: bytes, n: int) -> av.Packet[Any]:
        packet = av.Packet(payload)
        packet.pts = n * self._ticks
        packet.time_base = self._time_base
        return packet


@dataclass
class Utterance:
    """One clip said by the candidate, with when its packets went out (monotonic)."""

    clip: SpeechClip
    done: asyncio.Future[None]
    started_at: float | None = None
    voiced_end_at: float | None = None  # the packet carrying the end of speech
    ended_at: float | None = None


class MicrophoneTrack(_PacedTrack):
    """Silence until `say()`; then the clip's Opus packets, one per 20 ms."""

    kind = "audio"

    def __init__(self, silence: EncodedClip) -> None:
        super().__init__(silence.frame_s, AUDIO_CLOCK)
        self._silence = silence
        self._queue: deque[Utterance] = deque()
        self._position = 0  # packet index within the current utterance
        self.voiced_packets_sent = 0

    def say(self, clip: SpeechClip) -> Utterance:
        utterance = Utterance(clip, asyncio.get_running_loop().create_future())
        self._queue.append(utterance)
        return utterance

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    async def recv(self) -> av.Packet[Any]:
        n = await self._next_slot()
        if not self._queue:
            return self._packet(self._silence.payloads[n % len(self._silence.payloads)], n)
        utterance = self._queue[0]
        payload = self._take(utterance, time.monotonic())
        self.voiced_packets_sent += 1
        return self._packet(payload, n)

    def _take(self, utterance: Utterance, now: float) -> bytes:
        payloads = utterance.clip.clip.payloads
        index = self._position
        if index == 0:
            utterance.started_at = now
        if index == utterance.clip.voiced_end_packet:
            utterance.voiced_end_at = now
        self._position += 1
        if self._position == len(payloads):
            utterance.ended_at = now
            self._position = 0
            self._queue.popleft()
            if not utterance.done.done():
                utterance.done.set_result(None)
        return payloads[index]

    def stop(self) -> None:
        super().stop()
        while self._queue:
            done = self._queue.popleft().done
            if not done.done():
                done.cancel()


class CameraTrack(_PacedTrack):
    """A looped VP8 clip; `show()` switches to another at its first keyframe."""

    kind = "video"

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__(clip.frame_s, VIDEO_CLOCK)
        self._clip = clip
        self._index = 0
        self._next: EncodedClip | None = None
        self.switched_at: list[float] = []

    def show(self, clip: EncodedClip) -> None:
        self._next = clip

    async def recv(self) -> av.Packet[Any]:
        n = await self._next_slot()
        if self._next is not None:
            self._clip, self._index, self._next = self._next, 0, None
            self.switched_at.append(time.monotonic())
        payloads = self._clip.payloads
        payload = payloads[self._index % len(payloads)]
        self._index += 1
        return self._packet(payload, n)


@dataclass
class InterviewerEar:
    """Consumes the interviewer's audio (aiortc's remote queue is unbounded) and
    notes each onset of its voice: loud after at least `quiet_s` of quiet."""

    threshold: int = 500  # int16 peak; the server sends digital silence between sentences
    quiet_s: float = 0.3
    onsets: list[float] = field(default_factory=list)
    frames: int = 0
    voiced_frames: int = 0
    _last_loud: float = float("-inf")
    _heard: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame) and self._feed(frame, time.monotonic()):
                async with self._heard:
                    self._heard.notify_all()

    def _feed(self, frame: av.AudioFrame, now: float) -> bool:
        self.frames += 1
        if int(np.abs(frame.to_ndarray()).max(initial=0)) < self.threshold:
            return False
        self.voiced_frames += 1
        onset = now - self._last_loud >= self.quiet_s
        self._last_loud = now
        if onset:
            self.onsets.append(now)
        return onset

    def onset_after(self, t: float) -> float | None:
        return next((o for o in self.onsets if o >= t), None)

    async def wait_onset_after(self, t: float, timeout: float) -> float | None:
        """The first voice onset at or after `t`, waiting up to `timeout` for it."""
        async def heard() -> None:
            async with self._heard:
                await self._heard.wait_for(lambda: self.onset_after(t) is not None)
        try:
            await asyncio.wait_for(heard(), timeout)
        except TimeoutError:
            pass
        return self.onset_after(t)
