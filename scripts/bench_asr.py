"""Benchmark the streaming speech engine on the recorded test clips.

Feeds the LibriVox clips (each between stretches of quiet room tone) and
the ~21 s `longer.wav` answer as one stream of 20 ms chunks, paced in
simulated real time, while transcripts are produced in a one-thread
executor. Prints:

* last voiced frame -> final transcript latency, p50/p95 (all pieces, and
  pieces that end an utterance);
* VAD cost per 32 ms window and the slowest `feed()` call (it runs on the
  event loop);
* WER per clip, streaming and offline;
* real-time factor of plain offline faster-whisper on the same audio.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_asr.py [--speed 1] [--model base]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.asr_stream import StreamingRecognizer, TranscriptEvent, transcribe_jobs  # noqa: E402
from engine.transcriber import (  # noqa: E402
    TranscriptResult,
    WhisperSettings,
    WhisperTranscriber,
    resolve_asr_model,
)
from engine.vad import SAMPLE_RATE, SileroVadModel, VoiceActivityDetector  # noqa: E402
from tests.wer import word_errors  # noqa: E402

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
CLIPS = [f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890", "0920")]
CHUNK = 320
LEAD_S, TAIL_S = 1.0, 1.5
Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Piece:
    """One recording placed in the benchmark stream."""

    name: str
    reference: str
    pcm: Int16Array
    offset_s: float  # where its padded span starts in the stream
    span_s: float


def load_wav(path: Path) -> Int16Array:
    with wave.open(str(path)) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)


def room_tone(seconds: float, seed: int) -> Int16Array:
    noise = np.random.default_rng(seed).normal(0.0, 30.0, int(seconds * SAMPLE_RATE))
    return noise.astype(np.int16)


def build_stream() -> tuple[list[Piece], Int16Array]:
    """Each clip, then longer.wav, each with quiet before and after."""
    refs = {c: (SPEECH / f"{c}.txt").read_text().strip() for c in CLIPS}
    sources = [(c, refs[c], load_wav(SPEECH / f"{c}.wav")) for c in CLIPS]
    sources.append(("longer.wav", " ".join(refs.values()), load_wav(SPEECH / "longer.wav")))
    pieces, parts, offset = [], [], 0.0
    for seed, (name, ref, pcm) in enumerate(sources):
        padded = np.concatenate([room_tone(LEAD_S, seed), pcm, room_tone(TAIL_S, seed + 100)])
        span = len(padded) / SAMPLE_RATE
        pieces.append(Piece(name, ref, pcm, offset, span))
        parts.append(padded)
        offset += span
    return pieces, np.concatenate(parts)


class TimedTranscriber:
    """Records the compute time of every call of the wrapped transcriber."""

    def __init__(self, inner: WhisperTranscriber) -> None:
        self.inner = inner
        self.results: list[TranscriptResult] = []

    def transcribe(self, audio: npt.NDArray[np.float32]) -> TranscriptResult:
        result = self.inner.transcribe(audio)
        self.results.append(result)
        return result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def stream(
    recognizer: StreamingRecognizer,
    transcriber: TimedTranscriber,
    pcm: Int16Array,
    speed: float,
) -> tuple[list[TranscriptEvent], float]:
    """Feed paced chunks; return transcripts and the slowest feed() in seconds."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-asr") as executor:

        async def collect() -> list[TranscriptEvent]:
            return [e async for e in transcribe_jobs(recognizer, transcriber, executor)]

        task = asyncio.create_task(collect(), name="bench-transcripts")
        slowest, started = 0.0, loop.time()
        for i in range(0, len(pcm), CHUNK):
            if speed > 0:
                await asyncio.sleep(max(0.0, started + i / SAMPLE_RATE / speed - loop.time()))
            t0 = time.perf_counter()
            recognizer.feed(pcm[i : i + CHUNK])
            slowest = max(slowest, time.perf_counter() - t0)
        recognizer.flush()
        recognizer.close()
        return await task, slowest


def vad_cost_us(model: SileroVadModel, pcm: Int16Array) -> float:
    """Mean wall time of feed() per 32 ms window, on 20 ms chunks."""
    detector = VoiceActivityDetector(model)
    t0 = time.perf_counter()
    for i in range(0, len(pcm), CHUNK):
        detector.feed(pcm[i : i + CHUNK])
    return (time.perf_counter() - t0) / detector.windows_seen * 1e6


def report_latency(events: list[TranscriptEvent]) -> None:
    ends = [e for e in events if e.utterance_end]
    for label, chosen in (("all pieces", events), ("utterance ends", ends)):
        lat = [e.latency for e in chosen]
        print(
            f"last voiced -> final transcript ({label}, n={len(lat)}): "
            f"p50 {percentile(lat, 50):.3f}s  p95 {percentile(lat, 95):.3f}s  max {max(lat):.3f}s"
        )


def report_accuracy(
    pieces: list[Piece], events: list[TranscriptEvent], whisper: WhisperTranscriber
) -> None:
    print(f"{'clip':42} {'audio':>6} {'WER stream':>10} {'WER offline':>11} {'offline RTF':>11}")
    total_audio = total_compute = 0.0
    for piece in pieces:
        inside = [e for e in events if piece.offset_s <= e.start < piece.offset_s + piece.span_s]
        streamed = " ".join(e.text for e in inside)
        offline = whisper.transcribe(piece.pcm.astype(np.float32) / 32768.0)
        total_audio += offline.audio_s
        total_compute += offline.elapsed_s
        s_err, words = word_errors(piece.reference, streamed)
        o_err, _ = word_errors(piece.reference, offline.text)
        print(
            f"{piece.name:42} {offline.audio_s:5.1f}s {s_err / words:10.3f} "
            f"{o_err / words:11.3f} {offline.elapsed_s / offline.audio_s:11.3f}"
        )
    print(f"offline faster-whisper RTF over all audio: {total_compute / total_audio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="ASR model spec (default tiny.en)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "asr-models"
    )
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = unpaced")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    path, label = resolve_asr_model(args.model, args.cache_dir)
    whisper = WhisperTranscriber(path, WhisperSettings(cpu_threads=args.cpu_threads))
    vad_model = SileroVadModel()
    pieces, pcm = build_stream()
    print(f"model {label} ({path}), cpu_threads={args.cpu_threads}, speed={args.speed}x, "
          f"stream {len(pcm) / SAMPLE_RATE:.1f}s in {CHUNK}-sample chunks")

    timed = TimedTranscriber(whisper)
    recognizer = StreamingRecognizer(vad_model)
    events, slowest_feed = asyncio.run(stream(recognizer, timed, pcm, args.speed))
    stats = recognizer.stats()
    compute = sum(r.elapsed_s for r in timed.results)
    transcribed = sum(r.audio_s for r in timed.results)
    print(f"pieces {stats.jobs}, dropped {stats.dropped}; streaming compute {compute:.2f}s "
          f"for {transcribed:.1f}s of speech (RTF {compute / transcribed:.3f})")
    report_latency(events)
    print(f"VAD feed(): {vad_cost_us(vad_model, pcm):.0f} us per 32 ms window; "
          f"slowest feed() during the run {slowest_feed * 1e3:.2f} ms")
    report_accuracy(pieces, events, whisper)


if __name__ == "__main__":
    main()
