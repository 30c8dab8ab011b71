"""The video path at one session, with and without the change gate: process CPU
time and anomaly onset delays, on real photos paced as a camera.

    .venv/bin/python scripts/bench_video_gate.py [--rounds 2] [--seconds 60]

Each run feeds the real ``VideoAnalyzer`` (NanoDet-m with the person pass, one
detector thread, ``DETECT_FPS`` 2) a 15 fps camera: one person, then a second
person walks in, one person again, then a phone is held up, one person again
(the script below). Runs with and without the gate alternate, the order flipping
each round, so both see the same load on a shared machine. The onset delay is
the time from the photo switch to the anomaly's callback.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from PIL import Image

from adapters.detectors import NanoDetDetector
from engine.anomaly import Anomaly, AnomalyRules
from media.video_track import ChangeGate, VideoAnalyzer

REPO = Path(__file__).resolve().parents[1]

PHOTOS = REPO.parent / "shared" / "testdata" / "photos"
ONE = "coco_000000000436_1person_eating_closeup.jpg"
TWO = "coco_000000000165_2persons_indoor.jpg"
PHONE = "coco_000000168974_1person_child_holding_phone.jpg"
# (photo, share of the run): mostly still, two changes that must be recorded.
SCRIPT = ((ONE, 0.3), (TWO, 0.1), (ONE, 0.25), (PHONE, 0.1), (ONE, 0.25))
CAMERA_FPS = 15


class StillCamera(MediaStreamTrack):
    """A photo as a paced camera; `show()` switches it. Frames are built once
    (yuv420p, as a decoder gives them) so the source costs next to nothing."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._frames = {name: _frame(PHOTOS / name) for name, _ in SCRIPT}
        self._current = self._frames[SCRIPT[0][0]]
        self._start = time.monotonic()
        self._n = 0

    def show(self, name: str) -> None:
        self._current = self._frames[name]

    async def recv(self) -> av.VideoFrame:
        self._n += 1
        await asyncio.sleep(max(0.0, self._start + self._n / CAMERA_FPS - time.monotonic()))
        frame = self._current
        frame.pts = int(self._n * 90000 / CAMERA_FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


def _frame(path: Path) -> av.VideoFrame:
    image = Image.open(path).convert("RGB")
    image.thumbnail((640, 480))
    canvas = Image.new("RGB", (640, 480))
    canvas.paste(image, ((640 - image.width) // 2, (480 - image.height) // 2))
    return av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24").reformat(format="yuv420p")


@dataclass
class Run:
    cpu: float
    wall: float
    # Per anomaly type: seconds from the photo switch, and samples handled since.
    delays: dict[str, tuple[float, int]]
    runs: int
    samples: int
    dropped: int


async def one_run(detector: NanoDetDetector, gate: ChangeGate | None, seconds: float) -> Run:
    loop = asyncio.get_running_loop()
    camera = StillCamera()
    onsets: list[tuple[float, int, Anomaly]] = []

    def record(found: list[Anomaly], _rgb: np.ndarray) -> None:
        onsets.extend((loop.time(), analyzer.stats.samples_analysed, a) for a in found)

    switched: dict[str, tuple[float, int]] = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="detect") as executor:
        analyzer = VideoAnalyzer(camera, detector=detector, executor=executor, fps=2.0,
                                 rules=AnomalyRules(), on_anomalies=record, name="bench",
                                 gate=gate)
        for name, share in SCRIPT:
            camera.show(name)
            switched.setdefault(name, (loop.time(), analyzer.stats.samples_analysed))
            await asyncio.sleep(seconds * share)
        await analyzer.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    cause = {"multiple_persons": TWO, "devices_detected": PHONE}
    delays = {a.type: (at - switched[cause[a.type]][0], n - switched[cause[a.type]][1])
              for at, n, a in onsets if a.type in cause}
    s = analyzer.stats
    return Run(cpu, wall, delays, s.detector_runs, s.samples_analysed, s.samples_dropped)


def onset(runs: list[Run], kind: str) -> str:
    found = [r.delays[kind] for r in runs if kind in r.delays]
    if len(found) < len(runs):
        return f"missed in {len(runs) - len(found)} runs"
    secs, samples = [d[0] for d in found], [d[1] for d in found]
    return f"{statistics.median(secs):.2f} s (max {max(secs):.2f}), {max(samples)} samples"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    detector = NanoDetDetector()
    detector.detect(np.zeros((480, 640, 3), np.uint8))  # load and warm up, not measured
    modes: dict[str, ChangeGate | None] = {"every sample": None, "gated": ChangeGate()}
    results: dict[str, list[Run]] = {m: [] for m in modes}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for mode in order:
            result = await one_run(detector, modes[mode], args.seconds)
            results[mode].append(result)
            print(f"round {r + 1} {mode}: {result}", flush=True)
    cpu = {m: sum(x.cpu for x in rs) for m, rs in results.items()}
    print(f"\n{'mode':<13} {'CPU s/run':>9} {'cores':>6} {'runs':>5} {'samples':>7}  "
          f"{'multiple_persons onset':<36} devices_detected onset")
    for mode, rs in results.items():
        print(f"{mode:<13} {cpu[mode] / len(rs):>9.2f} {cpu[mode] / sum(x.wall for x in rs):>6.3f} "
              f"{sum(x.runs for x in rs) / len(rs):>5.0f} {sum(x.samples for x in rs) / len(rs):>7.0f}  "
              f"{onset(rs, 'multiple_persons'):<36} {onset(rs, 'devices_detected')}")
    print(f"\nCPU gated / every sample: {cpu['gated'] / cpu['every sample']:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
