"""What recording costs per session: CPU seconds per second of recording.

Feeds `--seconds` of media, as aiortc delivers it, into a `SessionRecorder`
as fast as possible (stamped with synthetic arrival times, so the recording
still spans the full duration):

* candidate audio: real speech (`tests/data/speech/longer.wav`, looped),
  s16 stereo 48 kHz, 960-sample frames;
* candidate video: 30 fps 640x480 yuv420p made from a real photo, slowly
  panning, with camera-like sensor noise (a still image would flatter VP8);
* interviewer audio for a third of the time: the same speech, s16 mono 48 kHz.

CPU is the whole process's (`time.process_time()`: the loop's `add_*` calls
and the writer thread), from the first frame to the end of `close()`.
Prints one row per recording fps.

Usage: .venv/bin/python scripts/bench_recorder.py [--seconds 60] [--fps 5 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from media.recorder import RecorderSettings, SessionRecorder
from testing import read_wav

REPO = Path(__file__).resolve().parent.parent
SPEECH = REPO / "tests" / "data" / "speech" / "longer.wav"
PHOTO = REPO.parent / "shared" / "testdata" / "photos" / "coco_000000000165_2persons_indoor.jpg"
RATE = 48_000
CAMERA_FPS = 30
DISTINCT_PICTURES = 90  # pictures made up front, played back and forth


@dataclass(frozen=True)
class Media:
    voice: list[av.AudioFrame]  # candidate, stereo
    tts: list[av.AudioFrame]  # interviewer, mono
    pictures: list[av.VideoFrame]


@dataclass(frozen=True)
class Result:
    fps: float
    cpu_s: float
    wall_s: float
    writer_cpu_s: float
    loop_us_per_frame: float
    loop_p99_us: float
    loop_worst_us: float  # slowest add_* call, waits for the GIL included
    frames_in: int
    video_written: int
    dropped: int
    recorded_s: float
    size_bytes: int


def speech_frames(seconds: float) -> tuple[list[av.AudioFrame], list[av.AudioFrame]]:
    """`seconds` of looped speech as 20 ms frames: (stereo as aiortc decodes, mono as TTS)."""
    pcm, rate = read_wav(SPEECH)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE, frame_size=960)
    mono: list[av.AudioFrame] = []
    while len(mono) < seconds * 50:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        mono += [f for f in resampler.resample(frame) if f.samples == 960]
    mono = mono[: int(seconds * 50)]
    return [_stereo(f) for f in mono], mono


def _stereo(mono: av.AudioFrame) -> av.AudioFrame:
    both = np.repeat(mono.to_ndarray().reshape(-1), 2).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(both, format="s16", layout="stereo")
    frame.sample_rate = RATE
    return frame


def camera_pictures() -> list[av.VideoFrame]:
    """640x480 yuv420p pictures of the photo, panning, with sensor noise."""
    photo = Image.open(PHOTO).convert("RGB")
    noise = np.random.default_rng(0)
    pictures = []
    for i in range(DISTINCT_PICTURES):
        left = i * (photo.width - 560) // DISTINCT_PICTURES
        crop = photo.crop((left, 0, left + 560, 420)).resize((640, 480))
        rgb = np.asarray(crop, dtype=np.float32) + noise.normal(0, 3, (480, 640, 3))
        rgb8 = np.clip(rgb, 0, 255).astype(np.uint8)
        pictures.append(av.VideoFrame.from_ndarray(rgb8, format="rgb24").reformat(format="yuv420p"))
    return pictures


def picture_at(pictures: list[av.VideoFrame], n: int) -> av.VideoFrame:
    """Back and forth through the pictures, so the motion never jumps."""
    period = 2 * len(pictures) - 2
    i = n % period
    return pictures[i if i < len(pictures) else period - i]


async def record(media: Media, fps: float, seconds: float, out: Path) -> Result:
    recorder = SessionRecorder(out, RecorderSettings(max_fps=fps, max_queue=100_000), name=f"bench{fps:g}")
    events = _schedule(media, seconds)
    # The prepared media are long-lived: keep the collector from rescanning them
    # mid-run, so the pauses measured are the recorder's, not the benchmark's.
    gc.collect()
    gc.freeze()
    calls = np.zeros(len(events))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, (at, add, frame) in enumerate(events):
        t = time.perf_counter()
        add(recorder, frame, 1000.0 + at)
        calls[i] = time.perf_counter() - t
    path = await recorder.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    s = recorder.stats
    return Result(
        fps=fps, cpu_s=cpu, wall_s=wall, writer_cpu_s=s.encode_cpu_seconds,
        loop_us_per_frame=float(calls.mean()) * 1e6, loop_p99_us=float(np.percentile(calls, 99)) * 1e6,
        loop_worst_us=float(calls.max()) * 1e6,
        frames_in=len(events),
        video_written=s.video_frames_written, dropped=s.dropped_audio + s.dropped_video,
        recorded_s=s.recorded_seconds, size_bytes=path.stat().st_size if path else 0,
    )


def _schedule(media: Media, seconds: float) -> list[tuple[float, object, object]]:
    """Every frame with its arrival time, in arrival order."""
    events: list[tuple[float, object, object]] = []
    events += [(i * 0.02, SessionRecorder.add_candidate_audio, f) for i, f in enumerate(media.voice)]
    tts_start = seconds / 3
    events += [
        (tts_start + i * 0.02, SessionRecorder.add_interviewer_audio, f)
        for i, f in enumerate(media.tts[: int(seconds / 3 * 50)])
    ]
    events += [
        (n / CAMERA_FPS, SessionRecorder.add_candidate_video, picture_at(media.pictures, n))
        for n in range(int(seconds * CAMERA_FPS))
    ]
    events.sort(key=lambda event: event[0])
    return events


def print_table(results: list[Result], seconds: float) -> None:
    print(f"{seconds:g} s of 48 kHz speech + {CAMERA_FPS} fps 640x480 video per session "
          f"(interviewer speaking {seconds / 3:g} s of it), fed as fast as possible")
    print("rec fps | frames in | video out | dropped | recorded s | CPU s | CPU s per rec s "
          "| writer CPU s | add_* us mean/p99/max | MB/min | wall s")
    for r in results:
        print(
            f"{r.fps:7g} | {r.frames_in:9d} | {r.video_written:9d} | {r.dropped:7d} | {r.recorded_s:10.2f} "
            f"| {r.cpu_s:5.2f} | {r.cpu_s / r.recorded_s:15.4f} | {r.writer_cpu_s:12.2f} "
            f"| {r.loop_us_per_frame:4.1f} / {r.loop_p99_us:4.1f} / {r.loop_worst_us:5.0f} | {r.size_bytes / 1e6 / (r.recorded_s / 60):6.2f} | {r.wall_s:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, nargs="+", default=[5.0, 10.0])
    args = parser.parse_args()
    if not PHOTO.is_file():
        sys.exit(f"photo not found: {PHOTO}")
    voice, tts = speech_frames(args.seconds)
    media = Media(voice=voice, tts=tts, pictures=camera_pictures())
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            asyncio.run(record(media, fps, args.seconds, Path(tmp) / f"bench-{fps:g}.webm"))
            for fps in args.fps
        ]
    print_table(results, args.seconds)


if __name__ == "__main__":
    main()
