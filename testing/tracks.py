"""What a simulated candidate sends: paced audio and video tracks.

Two kinds, on one pacing base that releases item n at start + n * period and
measures (rather than hides) how late the client itself runs:

* frame tracks, for tests: `SpeechTrack` and `ScriptedSpeech` send decoded
  PCM from WAV files, `PhotoTrack` a still photo as a camera; aiortc encodes
  them, which costs CPU but needs no preparation;
* packet tracks, for the load generator: `MicrophoneTrack` and `CameraTrack`
  send Opus and VP8 packets already encoded (`EncodedClip`). aiortc's
  `RTCRtpSender` packs an `av.Packet` from `recv()` as it is (the
  `MediaPlayer(decode=False)` path), so a candidate costs a timer, RTP
  packing and SRTP, and nothing else. Their `codec` names what the peer
  must negotiate for them.

Each track stamps its own timestamps, so switching clips or photos never makes
RTP time go backwards. The microphones send silence until told to speak, as a
real one never stops sending (the server's VAD needs the pause after an answer).
"""

from __future__ import annotations

import asyncio
import fractions
import time
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from PIL import Image

__all__ = [
    "CameraTrack",
    "EncodedClip",
    "MicrophoneTrack",
    "PhotoTrack",
    "ScriptedSpeech",
    "SpeechClip",
    "SpeechTrack",
    "Utterance",
    "read_wav",
    "transcript_of",
]

AUDIO_CLOCK = 48_000
VIDEO_CLOCK = 90_000
AUDIO_PTIME = 0.02
LATE_S = 0.04  # an item sent this late means the client itself is behind


def read_wav(path: Path) -> tuple[np.ndarray[Any, np.dtype[np.int16]], int]:
    """16-bit mono PCM samples and their rate."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def transcript_of(stem: Path) -> str:
    """The reference transcript next to a clip: `stem.txt`."""
    return stem.with_suffix(".txt").read_text().strip()


@dataclass(frozen=True)
class EncodedClip:
    """One stream's packets in order; each is one RTP frame's payload."""

    payloads: tuple[bytes, ...]
    keyframes: tuple[bool, ...]
    frame_s: float

    @property
    def duration_s(self) -> float:
        return len(self.payloads) * self.frame_s


@dataclass(frozen=True)
class SpeechClip:
    """An encoded answer with its transcript and where its speech lies."""

    name: str
    text: str
    clip: EncodedClip
    voiced_start_s: float
    voiced_end_s: float

    @property
    def voiced_end_packet(self) -> int:
        """Index of the packet that carries the end of the speech."""
        return min(len(self.clip.payloads) - 1, int(self.voiced_end_s / self.clip.frame_s))


class _PacedTrack(MediaStreamTrack):
    """Releases item n at start + n * period; lateness is measured, not hidden."""

    codec: ClassVar[str | None] = None  # the MIME type of pre-encoded packets

    def __init__(self, period_s: float) -> None:
        super().__init__()
        self._period_s = period_s
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
        due = self._start + self._n * self._period_s
        if due > now:
            await asyncio.sleep(due - now)
        else:
            self.max_lag_s = max(self.max_lag_s, now - due)
            self.packets_late += now - due > LATE_S
        n = self._n
        self._n += 1
        self.packets_sent += 1
        return n


# -- frame tracks -------------------------------------------------------------------


class SpeechTrack(_PacedTrack):
    """Silence, then a recorded clip, then silence, forever silent after."""

    kind = "audio"

    def __init__(self, wav: Path | None, lead_s: float = 0.5, gain: float = 1.0) -> None:
        super().__init__(AUDIO_PTIME)
        if wav is None:
            self._pcm, self._rate = np.zeros(0, np.int16), 16000
        else:
            self._pcm, self._rate = read_wav(wav)
        if gain != 1.0:
            self._pcm = np.clip(self._pcm * gain, -32768, 32767).astype(np.int16)
        lead = np.zeros(int(lead_s * self._rate), np.int16)
        self._pcm = np.concatenate([lead, self._pcm])
        self._samples = int(self._rate * AUDIO_PTIME)

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def frame_samples(self) -> int:
        """Samples in one 20 ms frame."""
        return self._samples

    async def recv(self) -> av.AudioFrame:
        n = await self._next_slot()
        chunk = self._pcm[n * self._samples:(n + 1) * self._samples]
        if len(chunk) < self._samples:
            chunk = np.concatenate([chunk, np.zeros(self._samples - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = n * self._samples
        frame.time_base = fractions.Fraction(1, self._rate)
        return frame


class ScriptedSpeech(SpeechTrack):
    """Silent until told to `say()` a clip; records when each clip's audio ends."""

    def __init__(self) -> None:
        super().__init__(None, lead_s=0)
        self.clip_ends: list[float] = []  # wall time (monotonic) each clip finished sending
        self._ends_at: list[int] = []

    def next_start(self) -> int:
        """The sample where `say()` would start a clip: after what is queued, or now."""
        return max(len(self._pcm), self._n * self._samples)

    def say(self, wav: Path) -> None:
        clip, rate = read_wav(wav)
        if rate != self._rate:
            raise ValueError(f"{wav}: {rate} Hz, the track sends {self._rate} Hz")
        start = self.next_start()
        pad = np.zeros(start - len(self._pcm), np.int16)
        self._pcm = np.concatenate([self._pcm, pad, clip])
        self._ends_at.append(len(self._pcm))

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        sent = self._n * self._samples
        while self._ends_at and sent >= self._ends_at[0]:
            self._ends_at.pop(0)
            self.clip_ends.append(time.monotonic())
        return frame


class PhotoTrack(_PacedTrack):
    """A still photo as a camera at `fps`; `show()` switches the photo."""

    kind = "video"

    def __init__(self, photo: Path, fps: float = 10, size: tuple[int, int] = (640, 480)) -> None:
        super().__init__(1 / fps)
        self._size = size
        self._fps = fps
        self.show(photo)

    def show(self, photo: Path) -> None:
        image = Image.open(photo).convert("RGB")
        image.thumbnail(self._size)
        canvas = Image.new("RGB", self._size)
        canvas.paste(image, ((self._size[0] - image.width) // 2, (self._size[1] - image.height) // 2))
        self._rgb = np.asarray(canvas)

    async def recv(self) -> av.VideoFrame:
        n = await self._next_slot()
        frame = av.VideoFrame.from_ndarray(self._rgb, format="rgb24")
        frame.pts = int(n * VIDEO_CLOCK / self._fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


# -- packet tracks ------------------------------------------------------------------


class _PacketTrack(_PacedTrack):
    def __init__(self, frame_s: float, clock_rate: int) -> None:
        super().__init__(frame_s)
        self._ticks = round(frame_s * clock_rate)
        self._time_base = fractions.Fraction(1, clock_rate)

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


class MicrophoneTrack(_PacketTrack):
    """Silence until `say()`; then the clip's Opus packets, one per 20 ms."""

    kind = "audio"
    codec = "audio/opus"

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


class CameraTrack(_PacketTrack):
    """A looped VP8 clip; `show()` switches to another at its first keyframe."""

    kind = "video"
    codec = "video/VP8"

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
