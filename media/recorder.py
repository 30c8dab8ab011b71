"""Session recording: candidate audio and video plus the interviewer's voice → one WebM file.

The event loop only stamps each frame with its arrival time and puts it in a
bounded queue (O(1); when the queue is full the frame is dropped and
counted). One writer thread owns the PyAV container and does all the rest:
conversion to 48 kHz mono, mixing the two voices, scaling, VP8/Opus
encoding, muxing and finalizing. aiortc's `MediaRecorder` would encode on the
loop instead.

Why WebM with VP8 + Opus: browsers play it natively in `<video>`, so a
reviewer needs no download or transcode; both encoders ship in the PyAV
wheels (libx264 would bring GPL licensing and .mkv/H.264 is not playable
everywhere); Opus is the codec WebRTC already uses, at its native 48 kHz, so
no sample-rate conversion is needed; VP8 in libvpx's realtime mode is cheap
at review quality (640 px, 5 fps).

Timeline: second 0 is the arrival of the first frame of any kind, and every
frame sits at its wall-clock (monotonic) arrival time after that, so audio
and video line up. Each audio source is laid down contiguously, even when
its frames arrive in bursts, and jumps forward to the arrival time only when
it falls behind by more than `audio_gap_s` (a real gap; the mix is silent
there). aiortc's audio jitter buffer holds at most ~0.3 s, so network jitter
never triggers a jump, and the lag between sound and picture stays under
`audio_gap_s`. The voices are summed with clipping; the mix is encoded
`mix_delay_s` behind the newest arrival, so a voice that comes in a little
late can still be added.

The container opens when the first video frame fixes the picture size
(audio waits in the mix until then), or with audio only after
`video_wait_s` without video, or at close. No frame at all means no file.
The file is written as `<path>.part` and renamed when it is complete, so a
reader never sees a half-written recording. A `.part` an earlier process
left (killed mid-interview) is kept aside as `<id>.interrupted-<n>.webm`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.video.stream import VideoStream

from engine.session import SessionClock
from media.queues import QueueLoad

__all__ = ["RecorderSettings", "RecorderStats", "SessionRecorder"]

log = logging.getLogger(__name__)

_RATE = 48_000
_BLOCK = 960  # samples in one 20 ms Opus frame
_SAMPLE_TIME = Fraction(1, _RATE)
_MS = Fraction(1, 1000)
_MAX_ERRORS = 20  # after this many failures the writer stops trying

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True)
class RecorderSettings:
    """How a session is recorded; the defaults suit review, not broadcast."""

    max_fps: float = 5.0  # input video is decimated by arrival time to at most this
    max_width: int = 640  # wider video is scaled down, keeping its aspect
    max_queue: int = 400  # frames between the loop and the writer (~4 s of media)
    video_bitrate: int = 250_000
    audio_bitrate: int = 32_000
    keyframe_interval_s: float = 2.0  # seek granularity in the recording
    vp8_speed: int = 8  # libvpx realtime speed, 1 (best picture) .. 16 (least CPU)
    audio_gap_s: float = 0.5  # an audio source this far behind its arrival time jumps ahead
    mix_delay_s: float = 1.0  # mixed audio is encoded this far behind the newest arrival
    audio_buffer_s: float = 30.0  # the most audio the mix holds (bursts of TTS ahead of time)
    video_wait_s: float = 10.0  # with no video by then, the file is audio only

    def __post_init__(self) -> None:
        _check(self.max_fps > 0, "max_fps must be > 0, got %r", self.max_fps)
        _check(self.max_width >= 16, "max_width must be >= 16, got %r", self.max_width)
        _check(self.max_queue >= 1, "max_queue must be >= 1, got %r", self.max_queue)
        _check(self.video_bitrate > 0 and self.audio_bitrate > 0, "bitrates must be > 0")
        _check(self.keyframe_interval_s > 0, "keyframe_interval_s must be > 0")
        _check(1 <= self.vp8_speed <= 16, "vp8_speed must be 1..16, got %r", self.vp8_speed)
        _check(self.audio_gap_s > 0.04, "audio_gap_s must exceed two 20 ms frames")
        _check(
            self.mix_delay_s > self.audio_gap_s,
            "mix_delay_s (%r) must exceed audio_gap_s (%r)", self.mix_delay_s, self.audio_gap_s,
        )
        _check(
            self.audio_buffer_s > self.video_wait_s + self.mix_delay_s,
            "audio_buffer_s must exceed video_wait_s + mix_delay_s",
        )


def _check(ok: bool, message: str, *args: object) -> None:
    if not ok:
        raise ValueError(message % args if args else message)


@dataclass
class RecorderStats:
    """Counters; the loop writes the first group, the writer thread the second."""

    candidate_audio_in: int = 0
    interviewer_audio_in: int = 0
    video_frames_in: int = 0
    video_frames_skipped: int = 0  # decimated to max_fps; by design, not a loss
    dropped_audio: int = 0  # the queue was full
    dropped_video: int = 0  # the queue was full
    queue_peak: int = 0

    audio_frames_written: int = 0  # 20 ms Opus frames of the mix
    video_frames_written: int = 0
    audio_frames_discarded: int = 0  # too late or too far ahead to mix
    video_frames_discarded: int = 0  # arrived after an audio-only file was opened
    errors: int = 0
    encode_seconds: float = 0.0  # writer thread wall time: convert, mix, encode, mux
    encode_cpu_seconds: float = 0.0  # the same, CPU time of the writer thread
    recorded_seconds: float = 0.0


class _Kind(enum.Enum):
    CANDIDATE = "candidate audio"
    INTERVIEWER = "interviewer audio"
    VIDEO = "candidate video"


class _Item(NamedTuple):
    kind: _Kind
    frame: av.AudioFrame | av.VideoFrame
    at: float  # arrival, seconds since the recording started


class SessionRecorder:
    """Records one interview to a WebM file; encoding never runs on the event loop.

    `add_*` are called from the loop and never block; `at` is the arrival
    time in `time.monotonic()` seconds (now when omitted; tests pass
    synthetic times). `close()` finalizes the file and must be called: the
    writer thread lives until then.

    The `add_*` methods fit the existing `on_frame` hooks: `AudioTranscriber`
    and `VideoAnalyzer` for the candidate, and `InterviewerTrack` for the
    interviewer, which calls it as each frame is played out, so TTS
    never arrives in bursts.
    """

    def __init__(
        self,
        path: Path,
        settings: RecorderSettings | None = None,
        *,
        name: str = "session",
        clock: SessionClock | None = None,
    ) -> None:
        self._path = Path(path)
        # Second 0 is the interview's clock's (started by the first frame if
        # nothing started it before), so offsets stamped on it are the
        # recording's times.
        self._clock = clock
        self._settings = settings or RecorderSettings()
        self._name = name
        self.stats = RecorderStats()
        # Unbounded underneath, bounded by `_offer` (the loop is the only producer),
        # so the stop marker always fits.
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # When each waiting item was put (the loop appends, the writer pops;
        # deque's append and popleft are atomic).
        self._put_at: deque[float] = deque()
        self._t0: float | None = None
        self._next_video = -math.inf
        self._closing: asyncio.Task[None] | None = None
        self._output: Path | None = None
        # A daemon, so a recorder nobody closed cannot hang interpreter exit.
        self._thread = threading.Thread(target=self._run, name=f"{name}-recorder", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        """Where the finished recording goes."""
        return self._path

    @property
    def started_at(self) -> float | None:
        """`time.monotonic()` of second 0 of the recording (the first frame's arrival)."""
        return self._t0

    def queue_load(self) -> QueueLoad:
        """Frames waiting for the writer thread and the age of the oldest."""
        try:
            return QueueLoad(len(self._put_at), time.monotonic() - self._put_at[0])
        except IndexError:  # empty (or emptied by the writer just now)
            return QueueLoad()

    @property
    def frames_dropped(self) -> int:
        return self.stats.dropped_audio + self.stats.dropped_video

    def add_candidate_audio(self, frame: av.AudioFrame, at: float | None = None) -> None:
        """Queue a decoded frame of the candidate's audio (any format and rate)."""
        self.stats.candidate_audio_in += 1
        if not self._offer(_Kind.CANDIDATE, frame, at):
            self.stats.dropped_audio += 1

    def add_interviewer_audio(self, frame: av.AudioFrame, at: float | None = None) -> None:
        """Queue a frame of the interviewer's voice, ideally as it is played out."""
        self.stats.interviewer_audio_in += 1
        if not self._offer(_Kind.INTERVIEWER, frame, at):
            self.stats.dropped_audio += 1

    def add_candidate_video(self, frame: av.VideoFrame, at: float | None = None) -> None:
        """Queue a video frame if a `max_fps` slot is due; otherwise skip it."""
        self.stats.video_frames_in += 1
        now = time.monotonic() if at is None else at
        if not self._video_slot_due(now):
            self.stats.video_frames_skipped += 1
        elif not self._offer(_Kind.VIDEO, frame, now):
            self.stats.dropped_video += 1

    async def close(self) -> Path | None:
        """Flush and finalize off the loop; idempotent; never raises for encoder errors.

        Returns the recording's path, or None when no frame ever arrived (no
        file is made) or writing failed (logged and counted in `stats.errors`).
        """
        if self._closing is None:
            self._queue.put(None)
            self._closing = asyncio.create_task(
                asyncio.to_thread(self._thread.join), name=f"{self._name}-recorder-close"
            )
        # Shielded: a cancelled caller leaves the file to be finished anyway.
        await asyncio.shield(self._closing)
        return self._output

    def _video_slot_due(self, now: float) -> bool:
        """Decimate on arrival time, so skipped frames never reach the queue."""
        if now < self._next_video:
            return False
        step = 1.0 / self._settings.max_fps
        # Slots stay on a grid so jitter does not lower the average rate; after
        # a pause the grid restarts at this frame.
        self._next_video += step
        if self._next_video <= now:
            self._next_video = now + step
        return True

    def _offer(self, kind: _Kind, frame: av.AudioFrame | av.VideoFrame, at: float | None) -> bool:
        """O(1) hand-off to the writer; False when the queue is full."""
        if self._closing is not None:
            return True  # closed: ignored, not a drop
        now = time.monotonic() if at is None else at
        if self._t0 is None:
            self._t0 = now if self._clock is None else self._clock.start(now)
        depth = self._queue.qsize()
        if depth >= self._settings.max_queue:
            return False
        self._put_at.append(time.monotonic())
        self._queue.put(_Item(kind, frame, now - self._t0))
        self.stats.queue_peak = max(self.stats.queue_peak, depth + 1)
        return True

    def _run(self) -> None:
        """Writer thread: the only code that touches the converters and the container."""
        writer = _Writer(self._path, self._settings, self.stats, self._name)
        while (item := self._queue.get()) is not None:
            self._put_at.popleft()
            writer.handle(item)
        self._output = writer.finish()


def _keep_aside(part: Path, path: Path) -> None:
    """A `.part` already there is what an earlier process left of this
    session's recording (it was killed; with a shared MEDIA_DIR, on another
    node that this one took the interview over from): keep it, as
    `<id>.interrupted-<n>.webm`, rather than write over it."""
    if not part.exists():
        return
    stem = path.name.removesuffix(".webm")
    n = 1
    while (kept := path.with_name(f"{stem}.interrupted-{n}.webm")).exists():
        n += 1
    os.replace(part, kept)
    log.warning("kept an earlier, unfinished recording of this session as %s", kept)


class _Writer:
    """Writer-thread state: converters, the audio mix and the lazily opened output."""

    def __init__(self, path: Path, settings: RecorderSettings, stats: RecorderStats, name: str) -> None:
        self._path = path
        self._part = path.with_name(path.name + ".part")
        self._settings = settings
        self._stats = stats
        self._name = name
        self._mix = _AudioMix(gap=round(settings.audio_gap_s * _RATE), capacity=round(settings.audio_buffer_s * _RATE))
        self._converters = {_Kind.CANDIDATE: _MonoConverter(), _Kind.INTERVIEWER: _MonoConverter()}
        self._out: _Output | None = None
        self._now = 0.0
        self._seen = False
        self._failed = False

    def handle(self, item: _Item) -> None:
        """Add one frame; errors are counted and logged, never raised."""
        if not self._failed:
            self._guarded(self._handle, item)

    def finish(self) -> Path | None:
        """Encode what is left and finalize; the file's path, or None if there is none."""
        if not self._seen:
            log.info("%s: no frame arrived, no recording made", self._name)
            return None
        if self._failed or not self._guarded(self._finalize):
            self._abandon()
            return None
        self._log_summary()
        return self._path

    def _guarded(self, step: Callable[..., None], *args: Any) -> bool:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            step(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - the recording must never take the session down
            self._note_error(exc)
            return False
        finally:
            self._stats.encode_seconds += time.perf_counter() - wall
            self._stats.encode_cpu_seconds += time.thread_time() - cpu

    def _note_error(self, exc: Exception) -> None:
        self._stats.errors += 1
        if self._stats.errors == 1:
            log.error("%s: recording error (later ones logged at debug level)", self._name, exc_info=exc)
        else:
            log.debug("%s: recording error", self._name, exc_info=exc)
        if self._stats.errors >= _MAX_ERRORS and not self._failed:
            self._failed = True
            log.error("%s: %d recording errors, giving up on %s", self._name, self._stats.errors, self._path)

    def _handle(self, item: _Item) -> None:
        self._seen = True
        at = max(0.0, item.at)
        self._now = max(self._now, at)
        if isinstance(item.frame, av.VideoFrame):
            self._video(item.frame, at)
        else:
            self._audio(item.kind, item.frame, at)
        if self._out is None and self._now >= self._settings.video_wait_s:
            self._open(None)
        self._drain(math.floor((self._now - self._settings.mix_delay_s) * _RATE))

    def _audio(self, kind: _Kind, frame: av.AudioFrame, at: float) -> None:
        pcm = self._converters[kind].convert(frame)
        if not self._mix.add(kind, pcm, round(at * _RATE)):
            self._stats.audio_frames_discarded += 1

    def _video(self, frame: av.VideoFrame, at: float) -> None:
        out = self._out or self._open(_scaled_size(frame.width, frame.height, self._settings.max_width))
        if not out.has_video:
            self._stats.video_frames_discarded += 1
        elif out.write_video(frame, at):
            self._stats.video_frames_written += 1

    def _open(self, size: tuple[int, int] | None) -> _Output:
        _keep_aside(self._part, self._path)
        self._out = _Output(self._part, size, self._settings)
        return self._out

    def _drain(self, until: int) -> None:
        """Encode the mix's whole 20 ms blocks before sample `until`."""
        if self._out is not None:
            start, pcm = self._mix.take(until)
            self._stats.audio_frames_written += self._out.write_audio(start, pcm)

    def _finalize(self) -> None:
        out = self._out or self._open(None)
        end = max(self._mix.end, round(self._now * _RATE))
        self._drain(-(-end // _BLOCK) * _BLOCK)
        out.close()
        self._stats.recorded_seconds = self._mix.base / _RATE
        os.replace(self._part, self._path)

    def _abandon(self) -> None:
        if self._out is not None:
            self._out.abort()
        log.error(
            "%s: recording failed after %d errors; partial output (if any) left at %s",
            self._name, self._stats.errors, self._part,
        )

    def _log_summary(self) -> None:
        s = self._stats
        log.info(
            "%s: recorded %.1f s to %s: %d video + %d audio frames written; dropped %d video, "
            "%d audio; %d errors; %.2f s writer CPU",
            self._name, s.recorded_seconds, self._path, s.video_frames_written,
            s.audio_frames_written, s.dropped_video, s.dropped_audio, s.errors, s.encode_cpu_seconds,
        )


class _Output:
    """The open WebM container: an Opus stream and, when there is video, a VP8 stream."""

    def __init__(self, path: Path, size: tuple[int, int] | None, settings: RecorderSettings) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), "w", format="webm")
        try:
            self._audio = _add_opus(self._container, settings)
            self._video = _add_vp8(self._container, size, settings) if size else None
        except Exception:
            self._container.close()
            raise
        self._last_pts = -1

    @property
    def has_video(self) -> bool:
        return self._video is not None

    def write_video(self, frame: av.VideoFrame, at: float) -> bool:
        """Scale and encode a frame at `at` seconds; False if its time is not after the last."""
        assert self._video is not None
        pts = round(at * 1000)
        if pts <= self._last_pts:
            return False
        self._last_pts = pts
        cc = self._video.codec_context
        out = frame.reformat(width=cc.width, height=cc.height, format="yuv420p")
        if out is frame:
            # The encoder stamps pts and time base on its input: never touch a shared frame.
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        out.pts, out.time_base = pts, _MS
        self._mux(self._video.encode(out))
        return True

    def write_audio(self, start: int, pcm: Pcm) -> int:
        """Encode whole 20 ms blocks starting at sample `start`; how many were encoded."""
        for offset in range(0, len(pcm), _BLOCK):
            frame = av.AudioFrame.from_ndarray(
                pcm[offset:offset + _BLOCK].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = _RATE, start + offset, _SAMPLE_TIME
            self._mux(self._audio.encode(frame))
        return len(pcm) // _BLOCK

    def close(self) -> None:
        """Flush both encoders and write the container's index and duration."""
        self._mux(self._audio.encode(None))
        if self._video is not None:
            self._mux(self._video.encode(None))
        self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:
            log.debug("closing a failed recording", exc_info=True)

    def _mux(self, packets: list[av.Packet[Any]]) -> None:
        for packet in packets:
            self._container.mux(packet)


def _add_opus(container: OutputContainer, settings: RecorderSettings) -> AudioStream:
    stream = container.add_stream("libopus", rate=_RATE, layout="mono", options={"application": "voip"})
    stream.bit_rate = settings.audio_bitrate
    return stream


def _add_vp8(
    container: OutputContainer, size: tuple[int, int], settings: RecorderSettings
) -> VideoStream:
    options = {
        "deadline": "realtime",
        # Negative means a fixed speed. A positive value makes VP8's realtime mode
        # pick its speed from the frame interval, so at 5 fps it would choose the
        # slowest, most expensive one.
        "cpu-used": str(-settings.vp8_speed),
        "lag-in-frames": "0",  # no look-ahead: no frames held back, less memory
    }
    stream = container.add_stream("libvpx", rate=Fraction(settings.max_fps).limit_denominator(1000), options=options)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.bit_rate = settings.video_bitrate
    stream.gop_size = max(1, round(settings.keyframe_interval_s * settings.max_fps))
    stream.thread_count = 1  # one core per session at most, predictable under load
    # Frames are stamped with their arrival time in ms, so the frame rate may vary.
    stream.codec_context.time_base = _MS
    return stream


def _scaled_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Fit within `max_width`, keep the aspect, even sides (4:2:0 chroma)."""
    scale = min(1.0, max_width / width)
    return _even(width * scale), _even(height * scale)


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


class _MonoConverter:
    """Any decoded audio → 48 kHz mono s16; rebuilt if the input format changes."""

    def __init__(self) -> None:
        self._source: tuple[str, str, int] | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=_RATE)

    def convert(self, frame: av.AudioFrame) -> Pcm:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if source != self._source:
            if self._source is not None:
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=_RATE)
            self._source = source
        parts = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class _AudioMix:
    """Sums audio sources on one 48 kHz timeline and hands out finished blocks.

    Positions are absolute sample numbers. Samples before `base` were handed
    out; the buffer holds `base` up to `end`, zero where no source wrote.
    """

    def __init__(self, gap: int, capacity: int) -> None:
        self._gap = gap
        self._capacity = capacity
        self._buf = np.zeros(2 * _RATE, np.int32)
        self._head = 0  # index of sample `base` in `_buf`
        self.base = 0
        self.end = 0
        self._cursors: dict[_Kind, int] = {}

    def add(self, source: _Kind, pcm: Pcm, at: int) -> bool:
        """Lay `pcm` after the source's previous samples, or at `at` after a gap."""
        cursor = self._cursors.get(source)
        start = at if cursor is None or at - cursor > self._gap else cursor
        if start < self.base:  # would land in audio already encoded
            pcm, start = pcm[self.base - start:], self.base
        end = start + len(pcm)
        if len(pcm) == 0 or end - self.base > self._capacity:
            return False
        self._window(start, end)[:] += pcm
        self._cursors[source] = end
        self.end = max(self.end, end)
        return True

    def take(self, until: int) -> tuple[int, Pcm]:
        """The whole blocks from `base` up to `until`, clipped to 16 bits, and their start."""
        start = self.base
        count = max(0, until - start) // _BLOCK * _BLOCK
        if count == 0:
            return start, np.zeros(0, np.int16)
        window = self._window(start, start + count)
        pcm = np.clip(window, -32768, 32767).astype(np.int16)
        window[:] = 0  # keep everything outside base..end zero
        self.base += count
        self._head += count
        return start, pcm

    def _window(self, start: int, end: int) -> npt.NDArray[np.int32]:
        """The buffer's view of samples start..end, growing or compacting it as needed."""
        need = end - self.base
        if self._head + need > len(self._buf):
            live = self._buf[self._head:self._head + max(0, self.end - self.base)]
            fresh = np.zeros(max(len(self._buf), 2 * need), np.int32)
            fresh[:len(live)] = live
            self._buf, self._head = fresh, 0
        offset = self._head + start - self.base
        return self._buf[offset:offset + end - start]
