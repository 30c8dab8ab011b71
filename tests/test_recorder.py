"""Session recorder: real speech and a real photo in, a playable WebM file out.

Frames are fed as fast as the test can make them, stamped with synthetic
arrival times, as aiortc would deliver them: candidate audio s16 stereo
48 kHz in 960-sample frames, video yuv420p, interviewer audio s16 mono.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from media.recorder import RecorderSettings, SessionRecorder
from testing import read_wav
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)

SPEECH = REPO / "tests" / "data" / "speech"
CANDIDATE_WAV = SPEECH / "sense_and_sensibility_01_austen_64kb-0870.wav"  # speech 0.24-6.76 s
INTERVIEWER_WAV = SPEECH / "sense_and_sensibility_01_austen_64kb-0880.wav"  # speech 0.25-2.77 s
SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTO = SHARED / "testdata" / "photos" / "coco_000000000165_2persons_indoor.jpg"
needs_photo = pytest.mark.skipif(
    not PHOTO.is_file(), reason=f"real photo not found at {PHOTO} (../shared is beside CI's checkout)"
)

RATE = 48_000
T0 = 1000.0  # synthetic monotonic time of the first arrival
ROOMY = RecorderSettings(max_queue=5000)  # feeding faster than real time must not drop


def webrtc_audio(pcm: np.ndarray, rate: int) -> list[av.AudioFrame]:
    """Mono PCM as aiortc delivers a remote track: s16 stereo 48 kHz, 960 samples a frame.

    aiortc's Opus decoder always outputs stereo; a browser's mono microphone
    comes out with both channels equal, at full level.
    """
    frames: list[av.AudioFrame] = []
    for mono in tts_audio(pcm, rate):
        both = np.repeat(mono.to_ndarray().reshape(-1), 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(both, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, mono.pts, mono.time_base
        frames.append(frame)
    return frames


def tts_audio(pcm: np.ndarray, rate: int) -> list[av.AudioFrame]:
    """Mono PCM as the interviewer's voice comes out of TTS: s16 mono 48 kHz, 20 ms frames."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE, frame_size=960)
    frames: list[av.AudioFrame] = []
    step = rate // 50
    for start in range(0, len(pcm), step):
        chunk = np.ascontiguousarray(pcm[start:start + step], dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = rate
        frames += resampler.resample(frame)
    return [f for f in frames + resampler.resample(None) if f.samples == 960]


def silent_frame() -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1920), np.int16), format="s16", layout="stereo")
    frame.sample_rate = RATE
    return frame


def tone(hz: float, seconds: float, amplitude: float = 8000) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def camera_frame(path: Path, size: tuple[int, int] = (640, 480)) -> tuple[av.VideoFrame, np.ndarray]:
    """A decoded-camera-like yuv420p frame of the photo, and the RGB it shows."""
    rgb = np.asarray(Image.open(path).convert("RGB").resize(size))
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    return frame, rgb


Feed = list[tuple[float, Callable[[Any, float], None], Any]]


def play(feed: Feed) -> None:
    """Call each `add_*` in arrival order, with its synthetic arrival time."""
    for at, add, frame in sorted(feed, key=lambda event: event[0]):
        add(frame, T0 + at)


def paced(frames: list[Any], start: float, period: float, add: Callable[[Any, float], None]) -> Feed:
    return [(start + i * period, add, frame) for i, frame in enumerate(frames)]


def decoded_audio(path: Path) -> np.ndarray:
    """The file's audio as one float array at 48 kHz, sample 0 at time 0."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    assert frames and frames[0].pts == 0
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def rms(x: np.ndarray, rate: int, start_s: float, end_s: float) -> float:
    part = x[int(start_s * rate):int(end_s * rate)].astype(np.float64)
    return float(np.sqrt(np.mean(part**2)))


def envelope(x: np.ndarray, rate: int, seconds: float, window_s: float = 0.1) -> np.ndarray:
    n = int(seconds / window_s)
    win = int(rate * window_s)
    x = np.pad(x.astype(np.float64), (0, max(0, n * win - len(x))))[: n * win]
    return np.sqrt(np.mean(x.reshape(n, win) ** 2, axis=1))


def tone_level(x: np.ndarray, hz: float, start_s: float, end_s: float) -> float:
    """Amplitude of the `hz` component in a stretch of the decoded audio."""
    part = x[int(start_s * RATE):int(end_s * RATE)]
    t = np.arange(len(part)) / RATE
    return float(2 * abs(np.mean(part * np.exp(-2j * np.pi * hz * t))))


@needs_photo
async def test_speech_photo_and_interviewer_make_a_playable_aligned_recording(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
):
    duration, interviewer_at, fps = 11.5, 8.0, 5
    candidate_pcm, rate = read_wav(CANDIDATE_WAV)
    interviewer_pcm, _ = read_wav(INTERVIEWER_WAV)
    voice = webrtc_audio(candidate_pcm, rate)
    voice += [silent_frame() for _ in range(int(duration * 50) - len(voice))]  # the line stays open
    video, photo_rgb = camera_frame(PHOTO)

    recorder = SessionRecorder(tmp_path / "recordings" / "s1.webm", ROOMY, name="s1")
    play(
        paced(voice, 0.0, 0.02, recorder.add_candidate_audio)
        + paced(tts_audio(interviewer_pcm, rate), interviewer_at, 0.02, recorder.add_interviewer_audio)
        + paced([video] * int(duration * 30), 0.0, 1 / 30, recorder.add_candidate_video)
    )
    path = await recorder.close()

    assert path == tmp_path / "recordings" / "s1.webm" and path.is_file()
    assert not path.with_name("s1.webm.part").exists()
    stats = recorder.stats
    assert stats.errors == stats.dropped_audio == stats.dropped_video == 0
    assert video.pts is None, "the recorder must not stamp frames it was lent"
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["audio", "video"]
        assert container.duration is not None
        assert abs(container.duration / 1e6 - duration) <= 0.5
        pictures = list(container.decode(video=0))
    assert abs(len(pictures) - fps * duration) <= 2
    assert (pictures[0].width, pictures[0].height) == (640, 480)
    assert pictures[0].time < 0.05 and duration - 1.5 / fps < pictures[-1].time < duration
    shown = pictures[len(pictures) // 2].to_ndarray(format="rgb24").astype(np.int16)
    assert np.mean(np.abs(shown - photo_rgb)) < 12, "the recorded picture is not the photo"

    audio = decoded_audio(path)
    # Where speech was, the recording has the speech's energy; where there was none, silence.
    source_level = rms(candidate_pcm / 32768, rate, 0.3, 6.7)
    assert 0.7 < rms(audio, RATE, 0.3, 6.7) / source_level < 1.4
    interviewer_level = rms(interviewer_pcm / 32768, rate, 0.3, 2.7)
    assert 0.7 < rms(audio, RATE, interviewer_at + 0.3, interviewer_at + 2.7) / interviewer_level < 1.4
    assert rms(audio, RATE, 7.3, 7.9) < 0.01 * source_level
    # The loudness over time follows the two voices, each at its own time.
    expected = np.zeros(int(duration * rate))
    expected[: len(candidate_pcm)] += candidate_pcm
    at = int(interviewer_at * rate)
    expected[at:at + len(interviewer_pcm)] += interviewer_pcm
    heard = envelope(audio, RATE, duration)
    assert np.corrcoef(envelope(expected, rate, duration), heard)[0, 1] > 0.9
    assert not loop_errors


async def test_voices_are_mixed_on_the_arrival_timeline(tmp_path: Path, loop_errors: list[dict[str, Any]]):
    """440 Hz candidate with a 1 s gap, 1 kHz interviewer arriving as one burst at 0.5 s."""
    recorder = SessionRecorder(tmp_path / "mix.webm", ROOMY)
    first, second = webrtc_audio(tone(440, 1.0), RATE), webrtc_audio(tone(440, 1.0), RATE)
    play(
        paced(first, 0.0, 0.02, recorder.add_candidate_audio)
        + paced(second, 2.0, 0.02, recorder.add_candidate_audio)  # nothing arrives from 1 to 2 s
        + paced(tts_audio(tone(1000, 1.0), RATE), 0.5, 0.0, recorder.add_interviewer_audio)
    )
    path = await recorder.close()

    assert path is not None
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["audio"]  # no video ever came
    audio = decoded_audio(path)
    assert abs(len(audio) / RATE - 3.0) < 0.05
    full = 8000 / 32768
    both = tone_level(audio, 440, 0.6, 0.9), tone_level(audio, 1000, 0.6, 0.9)
    assert min(both) > 0.8 * full, f"the overlap should hold both voices: {both}"
    assert tone_level(audio, 1000, 0.1, 0.4) < 0.05 * full  # the burst starts at its arrival
    assert tone_level(audio, 1000, 1.1, 1.4) > 0.8 * full  # ...and is laid out contiguously
    assert rms(audio, RATE, 1.6, 1.9) < 0.01 * full  # the candidate's gap is silence
    assert tone_level(audio, 440, 2.1, 2.9) > 0.8 * full  # resumed at its arrival time
    assert not loop_errors


@needs_photo
async def test_wide_video_is_scaled_to_640_and_decimated(tmp_path: Path, loop_errors: list[dict[str, Any]]):
    frame, _ = camera_frame(PHOTO, (1280, 720))
    recorder = SessionRecorder(tmp_path / "wide.webm", RecorderSettings(max_fps=10))
    play(paced([frame] * 60, 0.0, 1 / 30, recorder.add_candidate_video))
    path = await recorder.close()

    assert path is not None
    assert recorder.stats.video_frames_written == 20
    assert recorder.stats.video_frames_skipped == 40
    with av.open(str(path)) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) == 20
    assert (pictures[0].width, pictures[0].height) == (640, 360)
    assert not loop_errors


async def test_a_slow_writer_drops_and_counts_and_the_queue_stays_bounded(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
):
    # Full-HD frames take the writer milliseconds each; the loop offers everything
    # in one go, far faster than the writer can take it.
    big = av.VideoFrame.from_ndarray(
        np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8), format="rgb24"
    )
    voice = silent_frame()
    recorder = SessionRecorder(tmp_path / "slow.webm", RecorderSettings(max_queue=16))
    for i in range(2000):
        recorder.add_candidate_audio(voice, T0 + i * 0.02)
        if i % 10 == 0:
            recorder.add_candidate_video(big, T0 + i * 0.02)
    path = await recorder.close()

    stats = recorder.stats
    assert stats.queue_peak <= 16
    assert stats.dropped_audio > 0 and stats.dropped_video > 0
    assert stats.candidate_audio_in == 2000 and stats.video_frames_in == 200
    assert stats.video_frames_written + stats.dropped_video + stats.video_frames_skipped == 200
    assert stats.errors == 0
    assert path is not None
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == stats.video_frames_written
    assert not loop_errors


async def test_close_is_idempotent_and_survives_a_cancelled_caller(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
):
    recorder = SessionRecorder(tmp_path / "twice.webm")
    play(paced(webrtc_audio(tone(440, 1.0), RATE), 0.0, 0.02, recorder.add_candidate_audio))
    impatient = asyncio.create_task(recorder.close())
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    first, second = await asyncio.gather(recorder.close(), recorder.close())
    assert first == second == tmp_path / "twice.webm" and first.is_file()
    assert await recorder.close() == first
    recorder.add_candidate_audio(silent_frame())  # after close: ignored, not an error
    assert recorder.stats.dropped_audio == 0
    assert not loop_errors


async def test_close_with_no_frames_makes_no_file(tmp_path: Path, loop_errors: list[dict[str, Any]]):
    recorder = SessionRecorder(tmp_path / "empty.webm")
    assert await recorder.close() is None
    assert await recorder.close() is None
    assert list(tmp_path.iterdir()) == []
    assert recorder.started_at is None
    assert not loop_errors


async def test_write_errors_are_logged_and_counted_never_raised(
    tmp_path: Path, loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
):
    (tmp_path / "not-a-dir").write_text("")
    recorder = SessionRecorder(tmp_path / "not-a-dir" / "x.webm", name="broken")
    frame, _ = camera_frame_or_gray()
    with caplog.at_level(logging.ERROR, logger="media.recorder"):
        play(
            paced([silent_frame()] * 50, 0.0, 0.02, recorder.add_candidate_audio)
            + paced([frame] * 5, 0.0, 0.2, recorder.add_candidate_video)
        )
        assert await recorder.close() is None
    assert recorder.stats.errors >= 1
    assert any("recording error" in r.getMessage() for r in caplog.records)
    assert not loop_errors


def camera_frame_or_gray() -> tuple[av.VideoFrame, np.ndarray]:
    if PHOTO.is_file():
        return camera_frame(PHOTO)
    gray = np.full((480, 640, 3), 128, np.uint8)
    return av.VideoFrame.from_ndarray(gray, format="rgb24"), gray


def test_settings_are_validated_eagerly():
    with pytest.raises(ValueError, match="max_fps"):
        RecorderSettings(max_fps=0)
    with pytest.raises(ValueError, match="mix_delay_s"):
        RecorderSettings(audio_gap_s=1.0, mix_delay_s=0.5)


async def test_an_unfinished_recording_left_by_a_killed_process_is_kept(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
):
    """A node killed mid-interview leaves `<id>.webm.part`; the node that goes
    on with the interview (a shared MEDIA_DIR) records anew beside it."""
    left = tmp_path / "s1.webm.part"
    left.write_bytes(b"\x1a\x45\xdf\xa3 what the killed process wrote")
    frame, _ = camera_frame(PHOTO, (640, 480))
    recorder = SessionRecorder(tmp_path / "s1.webm", RecorderSettings(max_fps=10))
    play(paced([frame] * 30, 0.0, 1 / 30, recorder.add_candidate_video))
    path = await recorder.close()

    assert path == tmp_path / "s1.webm"
    kept = tmp_path / "s1.interrupted-1.webm"
    assert kept.read_bytes() == b"\x1a\x45\xdf\xa3 what the killed process wrote"
    with av.open(str(path)) as container:
        assert len(list(container.decode(video=0))) == 10
    assert not left.exists() and not loop_errors
