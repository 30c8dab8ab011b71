"""Benchmark the interviewer's voices: time to first audio and real-time factor.

For each engine (Piper with the Joe voice, espeak-ng), on five
interviewer-like sentences, on the path the media layer takes
(`split_sentences` -> `synthesize` -> `resample_to_48k`), prints:

* load time, and the very first (cold) synthesis;
* time to first audio: a five-sentence reply arrives, how long until its
  first sentence is 48 kHz PCM ready to play (median over the repeats);
* per sentence: audio length, synthesis time (median), real-time factor;
* totals: real-time factor over all sentences.

Piper's onnxruntime session runs on one thread, as in the server.

Usage: .venv/bin/python scripts/bench_tts.py [--repeats 5] [--engines piper espeak]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.tts import EspeakSynthesizer, PiperSynthesizer
from engine.ports import Synthesizer
from engine.resample import resample_to_48k
from engine.sentences import split_sentences

SENTENCES = [
    "Thanks for joining me today.",
    "Could you start by telling me a little about your current role?",
    "Walk me through the architecture of a system you designed, and the trade-offs you made.",
    "How did you measure whether it worked?",
    "If you had to build it again, what would you change first, and why?",
]
ENGINES: dict[str, Callable[[], Synthesizer]] = {
    "piper": PiperSynthesizer,
    "espeak": EspeakSynthesizer,
}


@dataclass(frozen=True)
class SentenceTiming:
    text: str
    audio_s: float
    synth_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.synth_s)


def speak(synthesizer: Synthesizer, sentence: str) -> tuple[float, float]:
    """(audio seconds, wall seconds) for one sentence, resampling included."""
    started = time.perf_counter()
    pcm = resample_to_48k(synthesizer.synthesize(sentence), synthesizer.sample_rate)
    return len(pcm) / 48_000, time.perf_counter() - started


def first_audio_s(synthesizer: Synthesizer, reply: str) -> float:
    """From a whole reply's text to its first sentence as 48 kHz PCM."""
    started = time.perf_counter()
    first = split_sentences(reply)[0]
    resample_to_48k(synthesizer.synthesize(first), synthesizer.sample_rate)
    return time.perf_counter() - started


def bench(name: str, repeats: int) -> None:
    started = time.perf_counter()
    synthesizer = ENGINES[name]()
    load_s = time.perf_counter() - started
    _, cold_s = speak(synthesizer, SENTENCES[0])
    reply = " ".join(SENTENCES)
    ttfa = statistics.median(first_audio_s(synthesizer, reply) for _ in range(repeats))
    timings = []
    for sentence in SENTENCES:
        runs = [speak(synthesizer, sentence) for _ in range(repeats)]
        audio_s = statistics.median(audio for audio, _ in runs)
        timings.append(SentenceTiming(sentence, audio_s, [wall for _, wall in runs]))
    report(name, synthesizer.sample_rate, load_s, cold_s, ttfa, timings)


def report(
    name: str, rate: int, load_s: float, cold_s: float, ttfa: float,
    timings: list[SentenceTiming],
) -> None:
    print(f"\n{name} ({rate} Hz): load {load_s:.2f} s, cold first sentence "
          f"{cold_s * 1000:.0f} ms, time to first audio {ttfa * 1000:.0f} ms")
    print(f"  {'audio s':>8} {'synth ms':>9} {'max ms':>7} {'RTF':>6}  sentence")
    for t in timings:
        print(f"  {t.audio_s:8.2f} {t.median_s * 1000:9.0f} {max(t.synth_s) * 1000:7.0f} "
              f"{t.median_s / t.audio_s:6.3f}  {t.text[:60]}")
    audio = sum(t.audio_s for t in timings)
    synth = sum(t.median_s for t in timings)
    print(f"  {audio:8.2f} {synth * 1000:9.0f} {'':>7} {synth / audio:6.3f}  total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = parser.parse_args()
    print(f"{len(SENTENCES)} sentences x {args.repeats} repeats; times include resampling to 48 kHz")
    for name in args.engines:
        bench(name, args.repeats)


if __name__ == "__main__":
    main()
