"""ASR sized to the answer: the fitted encoder path and the per-process scheduler.

Real LibriVox clips (tests/data/speech) through tiny.en: the fitted path
(features sized to the piece) must read them as the 30-s path does, and
the scheduler must serve a short answer before another session's burst of
long ones. No timing is asserted: only texts, orders and counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from adapters.silero import SileroVadModel
from adapters.whisper import WhisperSettings, WhisperTranscriber, resolve_asr_model
from engine.ports import TranscriptResult
from engine.vad import SAMPLE_RATE, SpeechSegment, VoiceActivityDetector
from media.asr_scheduler import AsrBacklogFull, AsrScheduler
from media.audio_track import AudioTranscriber
from tests.test_asr_engine import (
    CLIPS, ClipTrack, FakeTranscriber, Sink, load_wav, padded, reference, room_tone,
)
try:  # main moved the WER helper into the `testing` kit
    from testing import word_errors
except ImportError:
    from tests.wer import word_errors

Float32Array = npt.NDArray[np.float32]
# Measured (BENCHMARKS.md, "ASR sized to the answer"): fitted and 30-s texts
# differ by at most one ambiguous word ("ill-disposed" / "old-sposed") per piece.
MAX_DRIFT_WER = 0.15  # fitted text against the 30-s text, per recording
MAX_TOTAL_WER = 0.10  # fitted text against the reference, over all clips


def audio(name: str) -> Float32Array:
    return load_wav(name).astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def whisper() -> WhisperTranscriber:
    # tiny.en at 30 s: what these comparisons were measured on (the
    # default model, base, is covered by tests/test_asr_engine.py).
    path, _ = resolve_asr_model("tiny.en")
    return WhisperTranscriber(
        path, WhisperSettings(device="cpu", compute_type="int8", encoder="pad30"))


def with_encoder(whisper: WhisperTranscriber, **overrides: Any) -> WhisperTranscriber:
    """`whisper` set to the fitted path (or `overrides`)."""
    settings = WhisperSettings(device="cpu", compute_type="int8", encoder="fit")
    whisper.settings = dataclasses.replace(settings, **overrides)
    return whisper


# --- the fitted path ----------------------------------------------------------


def test_fitted_frames_are_even_bounded_and_cover_the_piece() -> None:
    settings = WhisperSettings(encoder="fit")
    for frames in (0, 1, 29, 300, 599, 1234, 2999, 3000, 5000):
        fitted = settings.fitted_frames(frames)
        assert fitted % 2 == 0 and 100 <= fitted <= 3000
        assert fitted >= min(frames + 300, 3000)  # the 3 s margin, within 30 s
    assert WhisperSettings(encoder="pad30").fitted_frames(300) == 3000
    with pytest.raises(ValueError):
        WhisperSettings(encoder="bogus")  # type: ignore[arg-type]


def test_fitted_path_reads_real_clips_as_the_30s_path(whisper: WhisperTranscriber) -> None:
    names = [f"{c}.wav" for c in CLIPS] + ["longer.wav"]
    refs = [reference(c) for c in CLIPS] + [" ".join(reference(c) for c in CLIPS)]
    report, errors, words = {}, 0, 0
    for name, ref in zip(names, refs):
        pad30 = with_encoder(whisper, encoder="pad30").transcribe(audio(name))
        fit = with_encoder(whisper).transcribe(audio(name))
        assert (pad30.decoding, fit.decoding) == ("pad30", whisper.settings.decoding)
        drift = word_errors(pad30.text, fit.text)
        report[name] = (fit.text, pad30.text)
        assert drift[0] / drift[1] <= MAX_DRIFT_WER, report[name]
        e, w = word_errors(ref, fit.text)
        errors, words = errors + e, words + w
    assert errors / words <= MAX_TOTAL_WER, report


def test_piece_longer_than_30s_is_decoded_in_chunks(whisper: WhisperTranscriber) -> None:
    answer = audio("longer.wav")  # ~21 s: twice is past one 30-s window
    result = with_encoder(whisper).transcribe(np.concatenate([answer, answer]))
    assert result.audio_s > 30
    ref = " ".join(reference(c) for c in CLIPS * 2)
    errors, words = word_errors(ref, result.text)
    assert errors / words <= 0.2, result.text


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.1, 0.29])
def test_very_short_pieces_work(whisper: WhisperTranscriber, seconds: float) -> None:
    speech = audio(f"{CLIPS[1]}.wav")[int(0.5 * SAMPLE_RATE) :]
    piece = speech[: int(seconds * SAMPLE_RATE)]
    for encoder in ("fit", "pad30"):
        result = with_encoder(whisper, encoder=encoder).transcribe(piece)
        assert isinstance(result.text, str) and len(result.text.split()) <= 5
        assert result.audio_s == pytest.approx(seconds, abs=1e-3)


def test_silence_gives_no_text(whisper: WhisperTranscriber) -> None:
    quiet = np.random.default_rng(0).normal(0, 30 / 32768, 2 * SAMPLE_RATE).astype(np.float32)
    assert with_encoder(whisper).transcribe(quiet).text == ""


def test_a_looping_fitted_text_is_decoded_again_at_30s(whisper: WhisperTranscriber) -> None:
    # With no margin at all, tiny.en loops on this VAD piece (the clip between
    # the room tone scripts/bench_asr.py puts around it): "an ill-sposed young
    # man, an ill-sposed young man, ..."; the refit at 30 s catches it.
    pcm = np.concatenate([room_tone(1.0, 1), load_wav(f"{CLIPS[1]}.wav"), room_tone(1.5, 101)])
    pieces = vad_pieces(pcm)
    exact = with_encoder(whisper, fit_margin_s=0.0, fit_round_s=0.02, fit_min_s=0.0)
    before = exact.refits
    for piece in pieces:
        text = exact.transcribe(piece.audio).text
        data = text.encode()
        assert len(data) / len(zlib.compress(data)) <= 2.4, text
    assert exact.refits > before
    # The loop itself is cut short: at most 15 tokens a second of the piece
    # (plus 16), not Whisper's 224, before it goes to 30 s.
    from adapters.whisper import _token_cap

    features = [exact._model.feature_extractor(p.audio)[:, :-1] for p in pieces]
    for chunk in features:
        texts, _, looped = exact._decode_chunks([chunk], "en")
        tokens = exact._tokenizer("en").encode(texts[0])
        assert len(tokens) <= _token_cap(chunk.shape[-1]) <= 15 * chunk.shape[-1] / 100 + 17
    assert any(exact._decode_chunks([chunk], "en")[2][0] for chunk in features)


def test_the_token_cap_is_what_ctranslate2_generates_at_most(
    whisper: WhisperTranscriber,
) -> None:
    """CTranslate2 4.x generates at most half of Whisper's `max_length`, so the
    fitted path passes twice its cap. With end-of-text suppressed the model
    runs to the limit, whatever the CPU. If a CTranslate2 release stops
    halving, this fails: revisit `_token_cap`."""
    import ctranslate2

    from adapters.whisper import _token_cap

    noise = np.random.default_rng(0).normal(0, 1, (1, 80, 300)).astype(np.float32)
    encoded = whisper._model.model.encode(ctranslate2.StorageView.from_array(noise))
    tokenizer = whisper._tokenizer("en")
    cap = _token_cap(300)
    assert cap == 15 * 3 + 16
    (result,) = whisper._model.model.generate(
        encoded, [[*tokenizer.sot_sequence, tokenizer.no_timestamps]], beam_size=1,
        max_length=2 * cap, suppress_tokens=[tokenizer.eot])
    assert len(result.sequences_ids[0]) == cap


# --- the scheduler -----------------------------------------------------------


def gate(scheduler: AsrScheduler) -> tuple[threading.Event, Future[bool]]:
    """Occupy the scheduler's one thread until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> bool:
        entered.set()
        return release.wait(30)

    future = scheduler.submit(hold)
    assert entered.wait(10)
    return release, future


def vad_pieces(pcm: npt.NDArray[np.int16]) -> list[SpeechSegment]:
    vad = VoiceActivityDetector(SileroVadModel())
    events = [e for i in range(0, len(pcm), 320) for e in vad.feed(pcm[i : i + 320])]
    return [e for e in events + vad.flush() if isinstance(e, SpeechSegment)]


def test_short_answer_is_not_served_behind_another_sessions_burst(
    whisper: WhisperTranscriber,
) -> None:
    long_pieces = vad_pieces(padded(load_wav("longer.wav")))  # 3 pieces of 5-8 s
    short = audio(f"{CLIPS[1]}.wav")  # 3 s
    assert len(long_pieces) >= 3
    assert all(len(p.audio) > len(short) for p in long_pieces)
    fitted = with_encoder(whisper)
    done: list[str] = []
    scheduler = AsrScheduler(1, "test-asr")
    try:
        release, held = gate(scheduler)
        futures = []
        for i, piece in enumerate(long_pieces):  # session A's burst comes first
            futures.append(scheduler.submit_piece(
                "a", len(piece.audio) / SAMPLE_RATE,
                lambda x, tag=f"a{i}": (fitted.transcribe(x), done.append(tag))[0], piece.audio))
        futures.append(scheduler.submit_piece(
            "b", len(short) / SAMPLE_RATE,
            lambda x: (fitted.transcribe(x), done.append("b"))[0], short))
        release.set()
        results = [f.result(120) for f in futures]
        assert held.result(10)
    finally:
        scheduler.shutdown()
    # Whatever A had waiting, B's short answer is served first.
    assert done == ["b", *(f"a{i}" for i in range(len(long_pieces)))]
    errors, words = word_errors(reference(CLIPS[1]), results[-1].text)
    assert errors / words <= 0.3
    # A plain pool in the same order would have served B last.
    fifo: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        for tag in ["a0", "a1", "a2", "b"]:
            pool.submit(fifo.append, tag)
    assert fifo[-1] == "b"


def test_pieces_due_together_are_batched_and_read_the_same(
    whisper: WhisperTranscriber,
) -> None:
    pieces = [p.audio for p in vad_pieces(padded(load_wav("longer.wav")))]
    fitted = with_encoder(whisper)
    alone = [fitted.transcribe(a).text for a in pieces]
    scheduler = AsrScheduler(1, "test-asr", max_batch=4, batch_ratio=2.0)
    try:
        release, _ = gate(scheduler)
        futures = [scheduler.submit_transcription(f"s{i}", fitted, a) for i, a in enumerate(pieces)]
        release.set()
        together = [f.result(120).text for f in futures]
    finally:
        scheduler.shutdown()
    assert scheduler.stats.batches >= 1 and scheduler.stats.batched >= 2
    for one, batched in zip(alone, together):
        errors, words = word_errors(one, batched)
        assert errors / words <= MAX_DRIFT_WER, (one, batched)
    # One session's pieces never share a batch: its lane is FIFO.
    single = AsrScheduler(1, "test-asr", max_batch=4, batch_ratio=2.0)
    try:
        release, _ = gate(single)
        futures = [single.submit_transcription("one", fitted, a) for a in pieces]
        release.set()
        [f.result(120) for f in futures]
    finally:
        single.shutdown()
    assert single.stats.batches == 0
    # At 30 s a batch does not pay: nothing is batched.
    padded30 = with_encoder(whisper, encoder="pad30")
    assert padded30.max_batch == 1
    at30 = AsrScheduler(1, "test-asr", max_batch=4, batch_ratio=2.0)
    try:
        release, _ = gate(at30)
        futures = [at30.submit_transcription(f"s{i}", padded30, a) for i, a in enumerate(pieces)]
        release.set()
        [f.result(120) for f in futures]
    finally:
        at30.shutdown()
    assert at30.stats.batches == 0


def test_rounds_alternate_sessions_and_a_long_wait_goes_first() -> None:
    order: list[str] = []
    scheduler = AsrScheduler(1, "test-asr", max_wait_s=0.2)
    try:
        release, _ = gate(scheduler)
        jobs = [("a", 9.0), ("a", 1.0), ("b", 5.0), ("b", 5.0), ("c", 2.0)]
        futures = [scheduler.submit_piece(s, d, order.append, f"{s}{d:g}") for s, d in jobs]
        release.set()
        for f in futures:
            f.result(10)
        # One job per session per round (shortest head first), lanes FIFO.
        assert order == ["c2", "b5", "a9", "a1", "b5"]

        order.clear()
        release, _ = gate(scheduler)
        first = scheduler.submit_piece("long", 9.0, order.append, "long")
        threading.Event().wait(0.3)  # `long` is now overdue
        second = scheduler.submit_piece("short", 1.0, order.append, "short")
        release.set()
        first.result(10), second.result(10)
        assert order == ["long", "short"] and scheduler.stats.overdue >= 1
    finally:
        scheduler.shutdown()


class Named:
    """Our own seam (engine.ports.Transcriber): notes which piece it decoded, in order."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def transcribe(self, audio: np.ndarray) -> TranscriptResult:
        self.order.append(int(audio[0]))
        return TranscriptResult(text="", audio_s=len(audio) / 16000, elapsed_s=0.0)


def test_an_urgent_draft_goes_before_its_sessions_waiting_pieces() -> None:
    scheduler = AsrScheduler(1, "test-asr", max_batch=1)
    named = Named()
    try:
        release, _ = gate(scheduler)
        pieces = [scheduler.submit_transcription("a", named, np.full(16000, i, np.float32),
                                                 urgent=i == 3) for i in (1, 2, 3)]
        release.set()
        for f in pieces:
            f.result(10)
        assert named.order == [3, 1, 2]
    finally:
        scheduler.shutdown()


def test_scheduler_is_bounded_and_counts_what_it_drops() -> None:
    scheduler = AsrScheduler(1, "test-asr", max_pending=2)
    try:
        release, _ = gate(scheduler)
        kept = [scheduler.submit_piece("a", 1.0, lambda: "kept") for _ in range(2)]
        assert scheduler.load().depth == 2
        with pytest.raises(AsrBacklogFull):
            scheduler.submit_piece("b", 1.0, lambda: "dropped")
        assert scheduler.stats.dropped == 1
        cancelled = kept[1].cancel()
        release.set()
        assert kept[0].result(10) == "kept" and cancelled and kept[1].cancelled()
    finally:
        scheduler.shutdown()
    assert scheduler.load().depth == 0
    with pytest.raises(RuntimeError):
        scheduler.submit(lambda: None)


# --- the pipeline through the scheduler --------------------------------------


@pytest.fixture
async def vad_executor() -> AsyncIterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-vad")
    yield pool
    await asyncio.to_thread(pool.shutdown, True)


async def test_pipeline_transcribes_through_the_scheduler(
    whisper: WhisperTranscriber, vad_executor: ThreadPoolExecutor,
    loop_errors: list[dict[str, Any]],
) -> None:
    scheduler = AsrScheduler(1, "test-asr")
    sinks = {name: Sink() for name in ("one", "two")}
    clips = {"one": CLIPS[0], "two": CLIPS[1]}
    tracks = {name: ClipTrack(padded(load_wav(f"{clips[name]}.wav"))) for name in sinks}
    pipelines = [
        AudioTranscriber(
            tracks[name], vad=VoiceActivityDetector(SileroVadModel()),
            transcriber=with_encoder(whisper), vad_executor=vad_executor,
            asr_executor=scheduler, on_transcript=sinks[name], name=f"test-{name}",
            max_frames=tracks[name].frame_count + 1,
        )
        for name in sinks
    ]
    try:
        for track in tracks.values():
            await asyncio.wait_for(track.finished.wait(), 30)
        for pipeline in pipelines:
            await pipeline.close(drain_timeout_s=120)
    finally:
        await asyncio.to_thread(scheduler.shutdown)
    for name, sink in sinks.items():
        (transcript,) = sink.transcripts
        assert transcript.asr_decoding == whisper.settings.decoding and transcript.asr_s > 0
        errors, words = word_errors(reference(clips[name]), transcript.text)
        assert errors / words <= 0.3, transcript.text
    assert scheduler.stats.served == 2 and scheduler.stats.dropped == 0


async def test_pipeline_counts_a_piece_the_full_scheduler_drops(
    vad_executor: ThreadPoolExecutor, loop_errors: list[dict[str, Any]],
) -> None:
    scheduler = AsrScheduler(1, "test-asr", max_pending=1)
    release, _ = gate(scheduler)
    filler = scheduler.submit_piece("other", 1.0, lambda: None)  # the one pending slot
    track = ClipTrack(padded(load_wav(f"{CLIPS[1]}.wav")))
    sink = Sink()
    pipeline = AudioTranscriber(
        track, vad=VoiceActivityDetector(SileroVadModel()), transcriber=FakeTranscriber(),
        vad_executor=vad_executor, asr_executor=scheduler, on_transcript=sink,
        name="test-full", max_frames=track.frame_count + 1,
    )
    try:
        await asyncio.wait_for(track.finished.wait(), 30)
        await pipeline.close(drain_timeout_s=60)
    finally:
        release.set()
        await asyncio.to_thread(scheduler.shutdown)
    assert filler.done()
    assert (pipeline.stats.pieces_dropped, pipeline.stats.pieces) == (1, 0)
    assert sink.transcripts == [] and scheduler.stats.dropped == 1


def test_asr_settings_come_from_the_environment() -> None:
    from config import Config, ConfigError

    config = Config.from_env({"ASR_ENCODER": "pad30", "ASR_FIT_MARGIN_S": "0.5",
                              "ASR_MAX_PENDING": "8", "ASR_MAX_WAIT_S": "2", "ASR_MAX_BATCH": "1"})
    assert (config.asr_encoder, config.asr_fit_margin_s) == ("pad30", 0.5)
    assert (config.asr_max_pending, config.asr_max_wait_s, config.asr_max_batch) == (8, 2.0, 1)
    assert Config.from_env({}).asr_encoder == "fit"
    for bad in ({"ASR_ENCODER": "fast"}, {"ASR_MAX_BATCH": "0"}, {"ASR_FIT_MARGIN_S": "-1"}):
        with pytest.raises(ConfigError):
            Config.from_env(bad)


def test_a_fitted_text_that_loops_is_sent_to_30_s() -> None:
    from adapters.whisper import _looks_looped

    # Seen from base, fitted, on 2.3 s of 0880 in a load test: a loop too
    # short for faster-whisper's gzip-ratio rule.
    looped = "He was not an ill-disposed young man. He was not an ill-disposed young man."
    assert _looks_looped(looped, 2.9)
    assert _looks_looped("a man, " * 20, 3.0)  # the gzip rule
    assert _looks_looped(" ".join(f"w{i}" for i in range(25)), 3.0)  # 8 words a second
    # What the clips really say is kept as it is.
    for clip in CLIPS:
        seconds = len(load_wav(f"{clip}.wav")) / SAMPLE_RATE
        assert not _looks_looped(reference(clip), seconds), clip
    assert not _looks_looped("I think, I think that we should go.", 2.5)
