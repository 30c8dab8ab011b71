"""Remote video → sampled object detection → proctoring anomalies.

One pump task only awaits `track.recv()` and puts the frame in a latest-wins
slot (aiortc's own queue is unbounded: a track nobody reads grows without
limit). A sampler task takes the newest frame `fps` times a second and runs
conversion and inference in the detector's executor, never on the loop.

A webcam interview is a still scene most of the time, so a change gate
(`ChangeGate`) spares the detector: each sampled frame is shrunk to a 64x48
grey thumbnail (PyAV's swscale, area-averaged, in a thread of its own, so it
never waits behind another session's detector run) and compared with the
thumbnail of the last frame the detector saw, allowing each pixel to have
moved a little (`changed_fraction`): a camera that sways or a candidate who
talks is the same scene, a phone or a face that was not there is not. The
detector runs when enough of it changed, at least every `max_interval_s`
anyway, and on every sample while an anomaly's onset or end is still being
counted (`AnomalyRules.settled()`). A skipped sample counts as the previous
result, so the debounce still advances once per sample.
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
from av.video.reformatter import VideoReformatter

from config import DEFAULT_DETECT_CHANGE, DEFAULT_DETECT_MAX_INTERVAL_S

from engine.aio import cancel_and_wait
from engine.anomaly import Anomaly, AnomalyRules
from engine.detector import Detection
from engine.ports import Detector
from engine.session import utc_now

__all__ = ["ChangeGate", "VideoAnalyzer", "VideoStats", "changed_fraction", "thumbnail"]

log = logging.getLogger(__name__)

# A VP8 frame may claim 16383 x 16383 pixels (an ~800 MB RGB array). Frames
# over MAX_PIXELS are refused (counted, neither analysed nor recorded);
# others are scaled to at most ANALYSE_SIDE pixels on their long side before
# the RGB conversion: the detector's input is 416 px, evidence stays legible.
MAX_PIXELS = 4096 * 2304
ANALYSE_SIDE = 1280

# The change gate's thumbnail, and how far (in grey levels, 0-255) one of its
# pixels must move to count as changed: VP8 noise and sensor noise stay under 1
# level once averaged this small; a 6-level brightness drift stays under it too.
THUMB_SIZE = (64, 48)
PIXEL_DELTA = 12
# Thumbnail pixels (20 px at 640x480) a pixel may have moved and still count
# as the same scene (`changed_fraction`).
SHIFT_TOLERANCE = 2
# Next to a strong edge, VP8's ringing moves a thumbnail pixel from one frame
# to the next by a share of the edge's contrast (on the load test's
# camouflage, flags and keyboard: `scripts/probe_video_gate.py`), so there a
# pixel must leave its neighbourhood's range by more than this share of that
# range (and by PIXEL_DELTA at least). A fifth absorbs most of the ringing;
# a quarter absorbed all of it but missed more placed phones (BENCHMARKS.md).
EDGE_SLACK = 0.2

AnomalySink = Callable[[list[Anomaly], np.ndarray], None]


@dataclass(frozen=True)
class ChangeGate:
    """When a sampled frame gets a detector run.

    ``min_changed``: the fraction of the thumbnail's inside (its border
    left out) that must be new since the last analysed frame, as
    `changed_fraction` counts it.
    ``max_interval_s``: the longest a still scene goes without a run.
    """

    min_changed: float = DEFAULT_DETECT_CHANGE
    max_interval_s: float = DEFAULT_DETECT_MAX_INTERVAL_S

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_changed <= 1.0:
            raise ValueError(f"min_changed must be a fraction, got {self.min_changed}")
        if self.max_interval_s <= 0:
            raise ValueError(f"max_interval_s must be positive, got {self.max_interval_s}")


@dataclass
class VideoStats:
    frames_in: int = 0
    samples_due: int = 0
    # Samples handled: a detector run, or the gate's "unchanged" (which
    # reuses the last run's result). Either way the anomaly rules saw them.
    samples_analysed: int = 0
    # Of those, the ones the gate spared the detector.
    samples_unchanged: int = 0
    # Sample slots that passed while the detector was still busy.
    samples_dropped: int = 0
    frames_refused: int = 0
    detect_seconds: float = 0.0  # conversion + detection, detector runs only

    @property
    def detector_runs(self) -> int:
        return self.samples_analysed - self.samples_unchanged


@dataclass(frozen=True)
class _Analysis:
    """A worker's answer: the frame's thumbnail, and the run's result unless
    the gate found the frame unchanged (``detections is None``)."""

    thumb: np.ndarray | None
    rgb: np.ndarray | None = None
    detections: list[Detection] | None = None


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
        gate: ChangeGate | None = ChangeGate(),
        gate_executor: Executor | None = None,
    ) -> None:
        """``on_sample`` gets the seconds of each detector run; ``gate=None``
        runs the detector on every sample. The gate's thumbnails are made in
        ``gate_executor`` (default: the detector's)."""
        self._track = track
        self._detector = detector
        self._executor = executor
        self._gate_executor = gate_executor or executor
        self._interval = 1.0 / fps
        self._rules = rules
        self._on_anomalies = on_anomalies
        self._on_frame = on_frame
        self._on_sample = on_sample
        self._latest: av.VideoFrame | None = None
        self._fresh = asyncio.Event()
        self._ended = False
        self._gate = gate
        # One reformatter per track keeps swscale's context between samples.
        self._shrinker = VideoReformatter()
        self._reference: np.ndarray | None = None  # thumbnail of the last analysed frame
        self._last_run = 0.0
        self._last: tuple[np.ndarray, list[Detection]] | None = None
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
            result = await self._analyse(frame, None if self._must_run(started) else self._reference)
            elapsed = loop.time() - started
            rgb, detections = self._take(result, started, elapsed)
            self.stats.samples_analysed += 1
            self._note_missed_slots(elapsed)
            self._apply(rgb, detections, started)
            await asyncio.sleep(max(0.0, self._interval - elapsed))

    def _must_run(self, now: float) -> bool:
        """A detector run whatever the thumbnail says."""
        return (
            self._gate is None
            or self._reference is None
            or self._last is None
            or now - self._last_run >= self._gate.max_interval_s
            or not self._rules.settled()
        )

    async def _analyse(self, frame: av.VideoFrame, reference: np.ndarray | None) -> _Analysis:
        """The gate's thumbnail, then a detector run unless the frame matches
        ``reference`` (None: run anyway)."""
        loop = asyncio.get_running_loop()
        thumb, same = None, False
        if self._gate is not None:
            thumb, same = await loop.run_in_executor(
                self._gate_executor, self._compare, frame, reference, self._gate.min_changed)
        if same:
            return _Analysis(thumb)
        rgb, detections = await loop.run_in_executor(
            self._executor, _detect, self._detector, frame)
        return _Analysis(thumb, rgb, detections)

    def _compare(
        self, frame: av.VideoFrame, reference: np.ndarray | None, min_changed: float
    ) -> tuple[np.ndarray, bool]:
        """Worker thread: the frame's thumbnail, and whether it shows the
        ``reference`` scene (False when there is none)."""
        thumb = thumbnail(frame, self._shrinker)
        return thumb, reference is not None and changed_fraction(reference, thumb) < min_changed

    def _take(
        self, result: _Analysis, started: float, elapsed: float
    ) -> tuple[np.ndarray, list[Detection]]:
        """The sample's frame and detections: this run's, or the last run's."""
        if result.rgb is None or result.detections is None:
            assert self._last is not None  # the gate never skips the first sample
            self.stats.samples_unchanged += 1
            return self._last
        self._reference, self._last_run = result.thumb, started
        self._last = (result.rgb, result.detections)
        self.stats.detect_seconds += elapsed
        if self._on_sample is not None:
            self._on_sample(elapsed)
        return self._last

    def _note_missed_slots(self, elapsed: float) -> None:
        missed = int(elapsed / self._interval)
        if missed:
            self.stats.samples_due += missed
            self.stats.samples_dropped += missed

    def _apply(self, rgb: np.ndarray, detections: list[Detection], seen_at: float) -> None:
        started = self._rules.update(detections, utc_now(), seen_at)
        if started:
            self._on_anomalies(started, rgb)


def thumbnail(frame: av.VideoFrame, shrinker: VideoReformatter | None = None) -> np.ndarray:
    """The change gate's view of ``frame``: a THUMB_SIZE grey image, area-averaged.
    ``shrinker`` keeps swscale's context between calls on one track."""
    return (shrinker or VideoReformatter()).reformat(
        frame, width=THUMB_SIZE[0], height=THUMB_SIZE[1], format="gray",
        interpolation="AREA").to_ndarray()


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pixels of two same-size grey images that are new:
    outside the range of the other image's pixels within ``SHIFT_TOLERANCE``
    of the same place, by more than ``PIXEL_DELTA`` levels (more, by
    ``EDGE_SLACK``, beside a strong edge), either way round.

    A local change (a phone raised, a second face) counts as much as its
    area; faint noise everywhere, and the whole scene or a head moving by a
    few pixels (a camera that sways, a candidate who talks), count for almost
    nothing: what was there is still there, a little further on. The
    ``SHIFT_TOLERANCE``-wide border is left out (a moved camera brings new
    world into it); the fraction is of the inside.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two grey images of one size, got {a.shape} and {b.shape}")
    r = SHIFT_TOLERANCE
    if min(a.shape) <= 2 * r:
        raise ValueError(f"images of {a.shape} have no inside past the {r}-pixel border")
    # A camera that moved by r pixels shows r pixels of the world at each
    # border that the other image never had: only the inside is compared.
    height, width = a.shape
    new: np.ndarray = (_outside(b, a) | _outside(a, b))[r:height - r, r:width - r]
    return float(np.count_nonzero(new)) / float(new.size)


def _outside(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Where `image` leaves the range of `reference`'s nearby pixels, by more
    than PIXEL_DELTA or EDGE_SLACK of that range, whichever is more."""
    r = SHIFT_TOLERANCE
    height, width = reference.shape
    padded = np.pad(reference.astype(np.int16), r, mode="edge")
    # The (2r+1)^2 neighbourhood's min and max, one axis at a time.
    across = [padded[:, dx:dx + width] for dx in range(2 * r + 1)]
    low, high = np.minimum.reduce(across), np.maximum.reduce(across)
    low = np.minimum.reduce([low[dy:dy + height] for dy in range(2 * r + 1)])
    high = np.maximum.reduce([high[dy:dy + height] for dy in range(2 * r + 1)])
    pixels = image.astype(np.int16)
    slack = np.maximum(PIXEL_DELTA, ((high - low) * EDGE_SLACK).astype(np.int16))
    outside: np.ndarray = (pixels < low - slack) | (pixels > high + slack)
    return outside


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
