"""The candidate's ear: it consumes the interviewer's audio and notes its voice."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["InterviewerEar"]


@dataclass
class InterviewerEar:
    """Reads the interviewer's track to its end (aiortc's remote queue is
    unbounded, so a track nobody reads grows without limit) and notes each
    onset of its voice: loud after at least `quiet_s` of quiet.

    `keep_audio` keeps what was heard (48 kHz mono int16, `heard_audio()`);
    `keep_audible_times` keeps the arrival time of every loud frame.
    """

    threshold: int = 500  # int16 peak; the server sends digital silence between sentences
    quiet_s: float = 0.3
    keep_audio: bool = False
    keep_audible_times: bool = False
    onsets: list[float] = field(default_factory=list)
    audible_at: list[float] = field(default_factory=list)
    frames: int = 0
    voiced_frames: int = 0
    _heard: list[np.ndarray[Any, np.dtype[np.int16]]] = field(default_factory=list)
    _last_loud: float = float("-inf")
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            if self.keep_audio:
                self._heard.extend(out.to_ndarray().reshape(-1).astype(np.int16)
                                   for out in resampler.resample(frame))
            if self._feed(frame, time.monotonic()):
                async with self._arrived:
                    self._arrived.notify_all()

    def _feed(self, frame: av.AudioFrame, now: float) -> bool:
        self.frames += 1
        if int(np.abs(frame.to_ndarray()).max(initial=0)) < self.threshold:
            return False
        self.voiced_frames += 1
        if self.keep_audible_times:
            self.audible_at.append(now)
        onset = now - self._last_loud >= self.quiet_s
        self._last_loud = now
        if onset:
            self.onsets.append(now)
        return onset

    def heard_audio(self) -> np.ndarray[Any, np.dtype[np.int16]]:
        """Everything heard so far, with `keep_audio`."""
        return np.concatenate(self._heard) if self._heard else np.zeros(0, np.int16)

    def onset_after(self, t: float) -> float | None:
        return next((o for o in self.onsets if o >= t), None)

    def audible_after(self, t: float) -> float | None:
        """The first loud frame after `t`, with `keep_audible_times`."""
        return next((a for a in self.audible_at if a > t), None)

    async def wait_onset_after(self, t: float, timeout: float) -> float | None:
        """The first voice onset at or after `t`, waiting up to `timeout` for it."""
        async def heard() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: self.onset_after(t) is not None)
        try:
            await asyncio.wait_for(heard(), timeout)
        except TimeoutError:
            pass
        return self.onset_after(t)
