"""The video pipeline under a slow detector: latest wins, missed samples counted."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from engine.anomaly import AnomalyRules
from engine.detector import Detection
from media.video_track import VideoAnalyzer
from testing import PhotoTrack
from tests.test_media import ONE_PERSON, needs_photos


class SlowDetector:
    """Our own Detector seam: takes 0.4 s a frame and sees one person."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[str] = set()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        time.sleep(0.4)
        return [Detection("person", 0.9, (0, 0, 10, 10))]


@needs_photos
async def test_slow_detector_drops_samples_and_memory_stays_flat(loop_errors: list[Any]):
    track = PhotoTrack(ONE_PERSON, fps=30)
    detector = SlowDetector()
    with ThreadPoolExecutor(1, thread_name_prefix="detect") as executor:
        analyzer = VideoAnalyzer(track, detector=detector, executor=executor, fps=10,
                                 rules=AnomalyRules(), on_anomalies=lambda *_: None, name="slow")
        await asyncio.sleep(1.0)  # warm up
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await asyncio.sleep(3.0)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        await analyzer.close()
    stats = analyzer.stats
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert stats.frames_in >= 90  # the pump kept up with 30 fps
    assert stats.samples_analysed <= 12  # the detector could not
    assert stats.samples_dropped >= stats.samples_analysed  # ...and the misses are counted
    assert grown < 2_000_000, f"memory grew by {grown} bytes in 3 s"  # no queue of frames
    assert detector.threads and all(t.startswith("detect") for t in detector.threads)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("slow-")]
