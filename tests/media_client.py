"""A scripted candidate: a real aiortc peer sending recorded speech and photos."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp.test_utils import TestClient
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from PIL import Image

from tests.conftest import REPO

SPEECH = REPO / "tests" / "data" / "speech"
CLIP = SPEECH / "sense_and_sensibility_01_austen_64kb-0870"
AUDIO_PTIME = 0.02


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def transcript_of(stem: Path) -> str:
    return stem.with_suffix(".txt").read_text().strip()


class _Paced(MediaStreamTrack):
    """Real-time pacing: frame n is released at start + n * period."""

    def __init__(self, period: float) -> None:
        super().__init__()
        self._period = period
        self._start: float | None = None
        self._n = 0

    async def _next_slot(self) -> int:
        if self._start is None:
            self._start = time.monotonic()
        n = self._n
        self._n += 1
        delay = self._start + n * self._period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return n


class SpeechTrack(_Paced):
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

    def say(self, wav: Path) -> None:
        clip, rate = read_wav(wav)
        assert rate == self._rate
        start = max(len(self._pcm), self._n * self._samples)
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


class PhotoTrack(_Paced):
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
        frame.pts = int(n * 90000 / self._fps)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class Candidate:
    """One candidate peer with an `events` data channel; collects what it receives,
    including the interviewer's audio (48 kHz mono int16 in `heard`)."""

    def __init__(self, audio: MediaStreamTrack | None, video: MediaStreamTrack | None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.heard: list[np.ndarray] = []
        self.first_audio_at: float | None = None
        self._listeners: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        for track in (audio, video):
            if track is not None:
                self.pc.addTrack(track)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def join(self, client: TestClient, session_id: str, **request: Any) -> None:
        resp = await client.post(
            f"/sessions/{session_id}/offer", json={"sdp": await self.offer(), "type": "offer"},
            **request,
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["type"] == "answer"
        await self.accept(body["sdp"])
        await asyncio.wait_for(self.opened.wait(), 20)

    def send(self, message: dict[str, Any] | str) -> None:
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

    async def wait_for(self, kind: str, timeout: float = 60, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` events of `kind` have arrived; return them."""
        async def enough() -> list[dict[str, Any]]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.of(kind)) >= count)
            return self.of(kind)
        return await asyncio.wait_for(enough(), timeout)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    def _on_message(self, raw: str) -> None:
        self.events.append(json.loads(raw))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._listeners.append(asyncio.get_running_loop().create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError: the track ended
                return
            for out in resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1)
                if self.first_audio_at is None and np.abs(pcm).max() > 500:
                    self.first_audio_at = time.monotonic()
                self.heard.append(pcm)

    def heard_audio(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._listeners:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
