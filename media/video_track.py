"""Remote video → sampled object detection → proctoring anomalies.

One pump task only awaits `track.recv()` and puts the frame in a latest-wins
slot (aiortc's own queue is unbounded: a track nobody reads grows without
limit). A sampler task takes the newest frame `fps` times a second and runs
conversion and inference in the detector's executor, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import cast

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.aio import cancel_and_wait
from engine.anomaly import Anomaly, AnomalyRules
from engine.detector import Detection
from engine.ports import Detector
from engine.session import utc_now

__all__ = ["VideoAnalyzer", "VideoStats"]

log = logging.getLogger(__name__)

# A VP8 frame may claim 16383 x 16383 pixels (an ~800 MB RGB array). Frames
# over MAX_PIXELS are refused (counted, neither analysed nor recorded);
# others are scaled to at most ANALYSE_SIDE pixels on their long side before
# the RGB conversion: the detector's input is 416 px, evidence stays legible.
MAX_PIXELS = 4096 * 2304
ANALYSE_SIDE = 1280

AnomalySink = Callable[[list[Anomaly], np.ndarray], None]


@dataclass
class VideoStats:
    frames_in: int = 0
    samples_due: int = 0
    samples_analysed: int = 0
    # Sample slots that passed while the detector was still busy.
    samples_dropped: int = 0
    frames_refused: int = 0
    detect_seconds: float = 0.0


class VideoAnalyzer:
    def __init__(
        self,
        track: MediaStreamTrack,
        *,
        detector: Detector,
        executor: Executor,
        fps: float,
        rules: AnomalyRules,
        on_anomalies: AnomalySink,
        name: str,
        on_frame: Callable[[av.VideoFrame], None] | None = None,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self._track = track
        self._detector = detector
        self._executor = executor
        self._interval = 1.0 / fps
        self._rules = rules
        self._on_anomalies = on_anomalies
        self._on_frame = on_frame
        self._on_sample = on_sample
        self._latest: av.VideoFrame | None = None
        self._fresh = asyncio.Event()
        self._ended = False
        self.stats = VideoStats()
        self._tasks = [
            asyncio.create_task(self._pump(), name=f"{name}-video-pump"),
            asyncio.create_task(self._sample(), name=f"{name}-video-sampler"),
        ]

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)

    async def _pump(self) -> None:
        while True:
            try:
                frame = cast(av.VideoFrame, await self._track.recv())  # decoded: a frame
            except MediaStreamError:
                self._ended = True
                self._fresh.set()
                return
            self.stats.frames_in += 1
            if frame.width * frame.height > MAX_PIXELS:
                self.stats.frames_refused += 1
                continue
            self._latest = frame
            self._fresh.set()
            if self._on_frame is not None:
                self._on_frame(frame)

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._fresh.wait()
            self._fresh.clear()
            frame, self._latest = self._latest, None
            if frame is None:
                if self._ended:
                    return
                continue
            started = loop.time()
            self.stats.samples_due += 1
            rgb, detections = await loop.run_in_executor(self._executor, _detect, self._detector, frame)
            self.stats.samples_analysed += 1
            elapsed = loop.time() - started
            self.stats.detect_seconds += elapsed
            if self._on_sample is not None:
                self._on_sample(elapsed)
            self._note_missed_slots(elapsed)
            self._apply(rgb, detections)
            await asyncio.sleep(max(0.0, self._interval - elapsed))

    def _note_missed_slots(self, elapsed: float) -> None:
        missed = int(elapsed / self._interval)
        if missed:
            self.stats.samples_due += missed
            self.stats.samples_dropped += missed

    def _apply(self, rgb: np.ndarray, detections: list[Detection]) -> None:
        started = self._rules.update(detections, utc_now())
        if started:
            self._on_anomalies(started, rgb)


def _detect(detector: Detector, frame: av.VideoFrame) -> tuple[np.ndarray, list[Detection]]:
    """Worker thread: convert the frame and run the detector."""
    t0 = time.perf_counter()
    rgb: np.ndarray = _scaled(frame).to_ndarray(format="rgb24")
    detections = detector.detect(rgb)
    log.debug("detected %d objects in %.1f ms", len(detections), (time.perf_counter() - t0) * 1e3)
    return rgb, detections


def _scaled(frame: av.VideoFrame) -> av.VideoFrame:
    long_side = max(frame.width, frame.height)
    if long_side <= ANALYSE_SIDE:
        return frame
    scale = ANALYSE_SIDE / long_side
    return frame.reformat(width=max(2, round(frame.width * scale)),
                          height=max(2, round(frame.height * scale)))
