"""Benchmark the live audio path: `AudioTranscriber` fed at wall-clock pace.

A local aiortc track plays the LibriVox clips (each between stretches of
quiet room tone) and the ~21 s `longer.wav` answer as one stream of 20 ms
frames, released in real time like a live candidate's, in the format
aiortc's Opus decoder hands over (s16 stereo 48 kHz). The product pipeline
resamples, runs the VAD and transcribes in one-thread executors, as the
server sizes them. Prints:

* last voiced frame -> final transcript, p50/p95, from `Transcript.latency_s`
  (it includes the VAD's end-of-speech silence);
* VAD cost per 32 ms window, timed inside the pipeline's VAD thread, and
  the whole VAD-thread cost (resampling included);
* frames and pieces dropped;
* the streaming path's ASR seconds / audio seconds beside the real-time
  factor of plain offline faster-whisper (`WhisperModel.transcribe`, one
  call on the same audio), and WER of both.

`--encoders` instead compares how the encoder is fed (no live stream):
the same stream goes through the product VAD (default settings, and
short-piece settings) and every piece it commits is transcribed with each
variant (pad30 = faster-whisper's `transcribe`, fit-* = features sized to
the piece), variants alternated round by round. Prints WER per variant and
encoder+decode time per audio second (process CPU and wall), the per-piece
wall ratio against pad30, and what batching fitted pieces saves.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_asr.py [--speed 1] [--model base]
       HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_asr.py --encoders \
           [--models tiny.en,base] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fractions
import logging
import tempfile
import time
import wave
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from adapters.silero import SileroVadModel
from adapters.whisper import (
    WhisperSettings,
    WhisperTranscriber,
    resolve_asr_model,
)
from engine.vad import SAMPLE_RATE, SpeechSegment, VadEvent, VadSettings, VoiceActivityDetector
from media.audio_track import AudioStats, AudioTranscriber, Transcript
from testing import word_errors

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
CLIPS = [f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890", "0920")]
LEAD_S, TAIL_S = 1.0, 1.5
FRAME_S = 0.02
TRACK_RATE = 48_000  # what aiortc's Opus decoder delivers, in stereo
Int16Array = npt.NDArray[np.int16]
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One recording placed in the benchmark stream."""

    name: str
    reference: str
    offset_s: float  # where its padded span starts in the stream
    span_s: float


def load_wav(path: Path) -> Int16Array:
    with wave.open(str(path)) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)


def room_tone(seconds: float, seed: int) -> Int16Array:
    noise = np.random.default_rng(seed).normal(0.0, 30.0, int(seconds * SAMPLE_RATE))
    return noise.astype(np.int16)


def build_stream() -> tuple[list[Source], Int16Array]:
    """Each clip, then longer.wav, each with quiet before and after (16 kHz mono)."""
    refs = {c: (SPEECH / f"{c}.txt").read_text().strip() for c in CLIPS}
    recordings = [(c, refs[c], load_wav(SPEECH / f"{c}.wav")) for c in CLIPS]
    recordings.append(("longer.wav", " ".join(refs.values()), load_wav(SPEECH / "longer.wav")))
    sources, parts, offset = [], [], 0.0
    for seed, (name, ref, pcm) in enumerate(recordings):
        padded = np.concatenate([room_tone(LEAD_S, seed), pcm, room_tone(TAIL_S, seed + 100)])
        sources.append(Source(name, ref, offset, len(padded) / SAMPLE_RATE))
        parts.append(padded)
        offset += len(padded) / SAMPLE_RATE
    return sources, np.concatenate(parts)


def browser_format(pcm: Int16Array) -> Int16Array:
    """16 kHz mono -> packed s16 stereo at TRACK_RATE, as one flat array."""
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=TRACK_RATE)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out])


class LiveTrack(MediaStreamTrack):
    """Frame n is released at start + n * 20 ms / speed; then the track ends."""

    kind = "audio"

    def __init__(self, stereo: Int16Array, speed: float) -> None:
        super().__init__()
        self._pcm = stereo
        self._samples = int(TRACK_RATE * FRAME_S)
        self._period = FRAME_S / speed if speed > 0 else 0.0
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        n, step = self._n, 2 * self._samples  # packed stereo: two values per sample
        if n * step >= len(self._pcm):
            self.stop()
            raise MediaStreamError
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + n * self._period - loop.time()))
        chunk = self._pcm[n * step : (n + 1) * step]
        chunk = np.pad(chunk, (0, step - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = TRACK_RATE
        frame.pts = n * self._samples
        frame.time_base = fractions.Fraction(1, TRACK_RATE)
        self._n += 1
        return frame


class TimedVad(VoiceActivityDetector):
    """Times `feed`, which the pipeline calls in its VAD thread."""

    busy_s = 0.0

    def feed(self, pcm: Any) -> list[VadEvent]:
        started = time.perf_counter()
        try:
            return super().feed(pcm)
        finally:
            self.busy_s += time.perf_counter() - started


class TimedExecutor(ThreadPoolExecutor):
    """One worker; adds up the time its jobs take."""

    busy_s = 0.0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.busy_s += time.perf_counter() - started

        return super().submit(timed)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def stream(
    pcm: Int16Array, speed: float, vad: TimedVad, whisper: WhisperTranscriber
) -> tuple[list[Transcript], AudioStats, float]:
    """Play the stream through the pipeline; (transcripts, stats, VAD-thread seconds)."""
    transcripts: list[Transcript] = []
    track = LiveTrack(browser_format(pcm), speed)
    with TimedExecutor(1, thread_name_prefix="bench-vad") as vad_executor, \
            ThreadPoolExecutor(1, thread_name_prefix="bench-asr") as asr_executor:
        pipeline = AudioTranscriber(
            track,
            vad=vad,
            transcriber=whisper,
            draft_transcriber=whisper.draft(),  # as the server runs it (media/runtime.py)
            vad_executor=vad_executor,
            asr_executor=asr_executor,
            on_transcript=transcripts.append,
            name="bench",
        )
        ended = asyncio.Event()
        track.on("ended", ended.set)
        await ended.wait()
        await pipeline.close(drain_timeout_s=120)
    return transcripts, pipeline.stats, vad_executor.busy_s


def report_latency(transcripts: list[Transcript]) -> None:
    ends = [t for t in transcripts if t.utterance_done]
    for label, chosen in (("utterance ends", ends), ("all pieces", transcripts)):
        lat = [t.latency_s for t in chosen]
        print(
            f"last voiced frame -> final transcript ({label}, n={len(lat)}): "
            f"p50 {percentile(lat, 50):.3f}s  p95 {percentile(lat, 95):.3f}s  max {max(lat):.3f}s"
        )


def report_wer(sources: list[Source], transcripts: list[Transcript]) -> tuple[int, int]:
    errors = words = 0
    for source in sources:
        end = source.offset_s + source.span_s
        text = " ".join(t.text for t in transcripts if source.offset_s <= t.start < end)
        e, w = word_errors(source.reference, text)
        errors, words = errors + e, words + w
        print(f"  {source.name:42} WER {e / w:.3f}")
    return errors, words


def offline(path: str, settings: WhisperSettings, audio: npt.NDArray[np.float32]) -> None:
    """Plain faster-whisper, one `transcribe` call on the whole stream."""
    from faster_whisper import WhisperModel

    model = WhisperModel(
        path, device="cpu", compute_type="int8",
        cpu_threads=settings.cpu_threads, num_workers=settings.num_workers,
    )
    reference = " ".join((SPEECH / f"{c}.txt").read_text().strip() for c in CLIPS * 2)
    duration = len(audio) / SAMPLE_RATE
    for label, beam_size in (("defaults, beam 5", 5), ("greedy, beam 1", 1)):
        started = time.perf_counter()
        segments, _ = model.transcribe(audio, language="en", beam_size=beam_size)
        text = " ".join(s.text.strip() for s in segments)  # decoding happens here
        elapsed = time.perf_counter() - started
        errors, words = word_errors(reference, text)
        print(
            f"offline faster-whisper ({label}): {elapsed:.2f}s for {duration:.1f}s "
            f"-> RTF {elapsed / duration:.3f}, WER {errors / words:.3f}"
        )


# --- --encoders: how the encoder is fed ------------------------------------

# label -> WhisperSettings overrides. "fit-30s" is the fitted code path at
# 30 s: it must agree with pad30, which checks the decoding options match.
VARIANTS: dict[str, dict[str, Any]] = {
    "pad30": {"encoder": "pad30"},
    "fit-30s": {"encoder": "fit", "fit_margin_s": 0.0, "fit_round_s": 30.0, "fit_min_s": 0.0},
    "fit-exact": {"encoder": "fit", "fit_margin_s": 0.0, "fit_round_s": 0.02, "fit_min_s": 0.0},
    "fit+0.5s": {"encoder": "fit", "fit_margin_s": 0.5, "fit_round_s": 0.02, "fit_min_s": 0.0},
    "fit+1s": {"encoder": "fit", "fit_margin_s": 1.0, "fit_round_s": 0.02, "fit_min_s": 0.0},
    "fit+2s": {"encoder": "fit", "fit_margin_s": 2.0, "fit_round_s": 0.02, "fit_min_s": 0.0},
    "fit+3s": {"encoder": "fit", "fit_margin_s": 3.0, "fit_round_s": 0.02, "fit_min_s": 0.0},
    "fit+5s": {"encoder": "fit", "fit_margin_s": 5.0, "fit_round_s": 0.02, "fit_min_s": 0.0},
    "fit-ceil5s": {"encoder": "fit", "fit_margin_s": 0.0, "fit_round_s": 5.0, "fit_min_s": 0.0},
    "fit-ceil10s": {"encoder": "fit", "fit_margin_s": 0.0, "fit_round_s": 10.0, "fit_min_s": 0.0},
    # Called "default" in the first runs (BENCHMARKS.md): 1 s steps, at least 2 s.
    "fit+1s/1s>=2s": {"encoder": "fit", "fit_margin_s": 1.0, "fit_round_s": 1.0, "fit_min_s": 2.0},
}
PIECE_SETTINGS = {
    "default VAD": VadSettings(),
    "short pieces": VadSettings(split_after_ms=2000, max_segment_ms=4000),
    "4 s pieces": VadSettings(split_after_ms=4000, max_segment_ms=8000),
    "8 s pieces": VadSettings(split_after_ms=8000, max_segment_ms=12000),
}


@dataclass
class Tally:
    """One variant's results over every round."""

    texts: dict[int, str] = dataclasses.field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    piece_wall: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    refits: int = 0  # pieces whose fitted text looped and went to 30 s


def vad_pieces(pcm: Int16Array, settings: VadSettings) -> list[SpeechSegment]:
    """The voiced pieces the product VAD commits, fed 20 ms at a time."""
    vad = VoiceActivityDetector(SileroVadModel(), settings)
    step = int(SAMPLE_RATE * FRAME_S)
    events = [e for i in range(0, len(pcm), step) for e in vad.feed(pcm[i : i + step])]
    events += vad.flush()
    return [e for e in events if isinstance(e, SpeechSegment) and e.last_voiced_at > e.start]


def run_variants(
    whisper: WhisperTranscriber, pieces: list[SpeechSegment], rounds: int, variants: list[str]
) -> dict[str, Tally]:
    """Each round transcribes every piece with every variant, in turn (A B C A B C)."""
    base = whisper.settings
    tallies = {label: Tally() for label in variants}
    for _ in range(rounds):
        for label in variants:
            overrides = VARIANTS[label]
            whisper.settings = dataclasses.replace(base, **overrides)
            tally = tallies[label]
            cpu0, wall0, refits0 = time.process_time(), time.perf_counter(), whisper.refits
            for i, piece in enumerate(pieces):
                started = time.perf_counter()
                tally.texts[i] = whisper.transcribe(piece.audio).text
                tally.piece_wall.setdefault(i, []).append(time.perf_counter() - started)
            tally.cpu_s += time.process_time() - cpu0
            tally.wall_s += time.perf_counter() - wall0
            tally.refits += whisper.refits - refits0
    whisper.settings = base
    return tallies


def variant_wer(
    sources: list[Source], pieces: list[SpeechSegment], texts: dict[int, str]
) -> float:
    errors = words = 0
    for source in sources:
        end = source.offset_s + source.span_s
        text = " ".join(texts[i] for i, p in enumerate(pieces) if source.offset_s <= p.start < end)
        e, w = word_errors(source.reference, text)
        errors, words = errors + e, words + w
    return errors / words


def report_variants(
    whisper: WhisperTranscriber, label: str, sources: list[Source],
    pieces: list[SpeechSegment], rounds: int, variants: list[str],
) -> dict[str, Tally]:
    tallies = run_variants(whisper, pieces, rounds, variants)
    audio_s = rounds * sum(len(p.audio) for p in pieces) / SAMPLE_RATE
    lengths = sorted(round(len(p.audio) / SAMPLE_RATE, 1) for p in pieces)
    print(f"\n{label}: {len(pieces)} pieces, lengths {lengths} s, {rounds} rounds")
    print("| variant | encoder input | WER | CPU s / audio s | wall s / audio s "
          "| per-piece wall vs pad30 (median) | looped, sent to 30 s |")
    print("|---|---|---|---|---|---|---|")
    pad30 = tallies["pad30"].piece_wall
    for name, tally in tallies.items():
        settings = dataclasses.replace(whisper.settings, **VARIANTS[name])
        frames = sorted(settings.fitted_frames(len(p.audio) // 160) for p in pieces)
        ratios = [sum(pad30[i]) / sum(w) for i, w in tally.piece_wall.items()]
        print(
            f"| {name} ({settings.decoding}) | {frames[0] / 100:g}-{frames[-1] / 100:g} s "
            f"| {variant_wer(sources, pieces, tally.texts):.3f} "
            f"| {tally.cpu_s / audio_s:.3f} | {tally.wall_s / audio_s:.3f} "
            f"| {float(np.median(ratios)):.2f}x | {tally.refits} of {rounds * len(pieces)} |"
        )
    return tallies


def pooled_wer(
    pooled: list[tuple[list[Source], list[SpeechSegment]]], whisper: WhisperTranscriber,
    variant: str, texts: dict[str, list[str]],
) -> float:
    """WER over every piece set at once (word errors and words summed)."""
    errors = words = 0
    for (sources, pieces), joined in zip(pooled, texts[variant]):
        piece_texts = dict(enumerate(joined.split(" | ")))
        for source in sources:
            end = source.offset_s + source.span_s
            text = " ".join(piece_texts[i] for i, p in enumerate(pieces)
                            if source.offset_s <= p.start < end)
            e, w = word_errors(source.reference, text)
            errors, words = errors + e, words + w
    return errors / words


def report_batching(whisper: WhisperTranscriber, pieces: list[SpeechSegment], rounds: int) -> None:
    """Fitted pieces one by one against the same pieces in one batch, alternated."""
    audios = [p.audio for p in pieces]
    by_length = sorted(audios, key=len)
    groups = {
        "2 similar": [by_length[-2:]],
        "2 mixed": [[by_length[0], by_length[-1]]],
        "4 mixed": [by_length[:2] + by_length[-2:]],
        "4 same": [[by_length[-1]] * 4],
    }
    print("\n| batch | pieces (s) | one by one CPU s | batched CPU s | batched / one by one |")
    print("|---|---|---|---|---|")
    for label, (group,) in groups.items():
        alone = batched = 0.0
        for _ in range(rounds):
            cpu0 = time.process_time()
            for audio in group:
                whisper.transcribe(audio)
            cpu1 = time.process_time()
            whisper.transcribe_batch(group)
            alone, batched = alone + cpu1 - cpu0, batched + time.process_time() - cpu1
        seconds = ", ".join(f"{len(a) / SAMPLE_RATE:.1f}" for a in group)
        print(f"| {label} | {seconds} | {alone:.2f} | {batched:.2f} | {batched / alone:.2f} |")


def encoders(args: argparse.Namespace) -> None:
    sources, pcm = build_stream()
    print(f"stream {len(pcm) / SAMPLE_RATE:.1f}s; cpu_threads={args.cpu_threads}; "
          f"CPU {cpu_model()}")
    piece_sets = {label: vad_pieces(pcm, PIECE_SETTINGS[label]) for label in args.pieces.split(",")}
    variants = args.variants.split(",")
    for spec in args.models.split(","):
        path, label = resolve_asr_model(spec, args.cache_dir)
        settings = WhisperSettings(cpu_threads=args.cpu_threads, device="cpu",
                                   compute_type="int8", encoder=args.encoder or "pad30")
        whisper = WhisperTranscriber(path, settings)
        texts: dict[str, list[str]] = {v: [] for v in variants}
        pooled: list[tuple[list[Source], list[SpeechSegment]]] = []
        for pieces_label, pieces in piece_sets.items():
            tallies = report_variants(
                whisper, f"{label}, {pieces_label}", sources, pieces, args.rounds, variants
            )
            for v in variants:
                texts[v].append(" | ".join(tallies[v].texts[i] for i in range(len(pieces))))
            pooled.append((sources, pieces))
        if len(piece_sets) > 1:
            print(f"\n{label}, every piece set pooled: WER "
                  + ", ".join(f"{v} {pooled_wer(pooled, whisper, v, texts):.3f}" for v in variants))
        print(f"{label}: fitted chunks decoded again at 30 s (too repetitive): {whisper.refits}")
        if args.batching:
            report_batching(whisper, piece_sets["default VAD"], args.rounds)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default=None, help="ASR model spec (default tiny.en)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "asr-models"
    )
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = unpaced")
    parser.add_argument("--encoders", action="store_true", help="compare encoder input lengths")
    parser.add_argument("--models", default="tiny.en", help="with --encoders: comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="with --encoders")
    parser.add_argument("--batching", action="store_true", help="with --encoders")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="with --encoders")
    parser.add_argument("--encoder", choices=("fit", "pad30"), default=None,
                        help="the live stream's path (default: the server's); "
                             "with --encoders --batching, the one batched (default pad30)")
    parser.add_argument("--pieces", default="default VAD,short pieces", help="with --encoders")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.encoders:
        encoders(args)
        return

    path, label = resolve_asr_model(args.model, args.cache_dir)
    settings = WhisperSettings(cpu_threads=args.cpu_threads, device="cpu", compute_type="int8")
    if args.encoder is not None:
        settings = dataclasses.replace(settings, encoder=args.encoder)
    whisper = WhisperTranscriber(path, settings)
    vad = TimedVad(SileroVadModel())
    sources, pcm = build_stream()
    duration = len(pcm) / SAMPLE_RATE
    print(
        f"model {label} cpu/int8 {settings.decoding}, cpu_threads={args.cpu_threads}; stream {duration:.1f}s "
        f"of 20 ms s16 stereo {TRACK_RATE} Hz frames at {args.speed}x real time; "
        f"end silence {vad.settings.end_silence_ms} ms"
    )

    started = time.perf_counter()
    transcripts, stats, vad_thread_s = asyncio.run(stream(pcm, args.speed, vad, whisper))
    print(f"played in {time.perf_counter() - started:.1f}s wall; {len(transcripts)} pieces")
    report_latency(transcripts)
    print(
        f"VAD: {vad.busy_s / vad.windows_seen * 1e6:.0f} us per 32 ms window "
        f"({vad.windows_seen} windows); VAD thread with resampling "
        f"{vad_thread_s / vad.windows_seen * 1e6:.0f} us per window"
    )
    print(
        f"frames in {stats.frames_in}, dropped {stats.frames_dropped}; "
        f"pieces {stats.pieces}, dropped {stats.pieces_dropped}"
    )
    print(
        f"streaming ASR: {stats.asr_seconds:.2f}s for {duration:.1f}s of audio "
        f"-> {stats.asr_seconds / duration:.3f} ASR s per audio s"
    )
    print("streaming WER per recording:")
    errors, words = report_wer(sources, transcripts)
    print(f"streaming WER overall {errors / words:.3f}")
    offline(path, settings, pcm.astype(np.float32) / 32768.0)


if __name__ == "__main__":
    main()
