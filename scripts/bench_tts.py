"""Benchmark the interviewer's voices: synthesis time, the server's CPU, first audio, the cache.

Engines, on five interviewer-like sentences, on the path the media layer
takes (`split_sentences` -> `synthesize` -> `resample_to_48k`):

* ``piper``: Piper in this process (`adapters.piper_worker.PiperSynthesizer`,
  what the server did before; one onnxruntime thread);
* ``pool``: Piper out of process (`adapters.tts_pool.PiperPool`, one worker,
  what the server does now);
* ``espeak``: the espeak-ng binary.

The engines take turns sentence by sentence (same run, same machine
load), so the ratios between them are fair even when absolute times are
noisy. Prints, per engine: load time, the cold first sentence, time to
first audio (a five-sentence reply arrives -> its first sentence is 48 kHz
PCM; median), per sentence the median synthesis time and this process's
CPU time (all its threads: what the server pays), and the real-time
factor; then out-of-process / in-process ratios and the latency of a
sentence served from `adapters.tts_cache.CachedSynthesizer`.

Usage: .venv/bin/python scripts/bench_tts.py [--repeats 5] [--engines piper pool espeak]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.piper_worker import PiperSynthesizer
from adapters.tts import EspeakSynthesizer
from adapters.tts_cache import CachedSynthesizer
from adapters.tts_pool import PiperPool
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
    "pool": PiperPool,
    "espeak": EspeakSynthesizer,
}


@dataclass
class Runs:
    """One engine's measurements."""

    synthesizer: Synthesizer
    load_s: float
    cold_s: float = 0.0
    first_audio_s: list[float] = field(default_factory=list)
    audio_s: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, list[float]] = field(default_factory=dict)

    def median_wall(self, sentence: str) -> float:
        return statistics.median(self.wall_s[sentence])

    def median_cpu(self, sentence: str) -> float:
        return statistics.median(self.cpu_s[sentence])


def speak(synthesizer: Synthesizer, sentence: str) -> tuple[float, float, float]:
    """(audio s, wall s, this process's CPU s) for one sentence, resampling included."""
    cpu, wall = time.process_time(), time.perf_counter()
    pcm = resample_to_48k(synthesizer.synthesize(sentence), synthesizer.sample_rate)
    return len(pcm) / 48_000, time.perf_counter() - wall, time.process_time() - cpu


def first_audio_s(synthesizer: Synthesizer, reply: str) -> float:
    """From a whole reply's text to its first sentence as 48 kHz PCM."""
    started = time.perf_counter()
    resample_to_48k(synthesizer.synthesize(split_sentences(reply)[0]), synthesizer.sample_rate)
    return time.perf_counter() - started


def load(name: str) -> Runs:
    started = time.perf_counter()
    synthesizer = ENGINES[name]()
    runs = Runs(synthesizer, time.perf_counter() - started)
    runs.cold_s = speak(synthesizer, SENTENCES[0])[1]
    return runs


def bench(engines: dict[str, Runs], repeats: int) -> None:
    """Every engine in turn, sentence by sentence, `repeats` times."""
    reply = " ".join(SENTENCES)
    for _ in range(repeats):
        for runs in engines.values():
            runs.first_audio_s.append(first_audio_s(runs.synthesizer, reply))
        for sentence in SENTENCES:
            for runs in engines.values():
                audio, wall, cpu = speak(runs.synthesizer, sentence)
                runs.audio_s[sentence] = audio
                runs.wall_s.setdefault(sentence, []).append(wall)
                runs.cpu_s.setdefault(sentence, []).append(cpu)


def report(name: str, runs: Runs) -> None:
    rate = runs.synthesizer.sample_rate
    print(f"\n{name} ({rate} Hz): load {runs.load_s:.2f} s, cold first sentence "
          f"{runs.cold_s * 1000:.0f} ms, time to first audio "
          f"{statistics.median(runs.first_audio_s) * 1000:.0f} ms")
    print(f"  {'audio s':>8} {'synth ms':>9} {'max ms':>7} {'cpu ms':>7} {'RTF':>6}  sentence")
    for s in SENTENCES:
        print(f"  {runs.audio_s[s]:8.2f} {runs.median_wall(s) * 1000:9.0f} "
              f"{max(runs.wall_s[s]) * 1000:7.0f} {runs.median_cpu(s) * 1000:7.1f} "
              f"{runs.median_wall(s) / runs.audio_s[s]:6.3f}  {s[:60]}")
    audio = sum(runs.audio_s.values())
    wall = sum(runs.median_wall(s) for s in SENTENCES)
    cpu = sum(runs.median_cpu(s) for s in SENTENCES)
    print(f"  {audio:8.2f} {wall * 1000:9.0f} {'':>7} {cpu * 1000:7.1f} {wall / audio:6.3f}  total")


def compare(inside: Runs, outside: Runs) -> None:
    wall = sum(outside.median_wall(s) for s in SENTENCES) / sum(inside.median_wall(s) for s in SENTENCES)
    cpu_in = sum(inside.median_cpu(s) for s in SENTENCES)
    cpu_out = sum(outside.median_cpu(s) for s in SENTENCES)
    first = statistics.median(outside.first_audio_s) / statistics.median(inside.first_audio_s)
    print(f"\nout of process / in process: synthesis time x{wall:.2f}, time to first audio "
          f"x{first:.2f}, server CPU x{cpu_out / cpu_in:.3f} ({cpu_out * 1000:.1f} ms vs "
          f"{cpu_in * 1000:.1f} ms for the five sentences)")


def cache_hit(synthesizer: Synthesizer, repeats: int) -> None:
    cache = CachedSynthesizer(synthesizer)
    miss = speak(cache, SENTENCES[1])[1]
    count = max(repeats, 20)
    hits = [speak(cache, SENTENCES[1])[1] for _ in range(count)]
    bare = []
    for _ in range(count):
        started = time.perf_counter()
        cache.synthesize(SENTENCES[1])
        bare.append(time.perf_counter() - started)
    print(f"\ncache: miss {miss * 1000:.0f} ms; hit {statistics.median(bare) * 1e6:.1f} µs, "
          f"{statistics.median(hits) * 1000:.1f} ms with the resampling to 48 kHz "
          f"(medians of {count})")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} x{len(names)}" if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = parser.parse_args()
    print(f"{len(SENTENCES)} sentences x {args.repeats} repeats, engines in turn; "
          f"times include resampling to 48 kHz; {cpu_model()}")
    engines = {name: load(name) for name in args.engines}
    try:
        bench(engines, args.repeats)
        for name, runs in engines.items():
            report(name, runs)
        if "piper" in engines and "pool" in engines:
            compare(engines["piper"], engines["pool"])
        if "pool" in engines:
            cache_hit(engines["pool"].synthesizer, args.repeats)
    finally:
        pool = engines.get("pool")
        if pool is not None and isinstance(pool.synthesizer, PiperPool):
            pool.synthesizer.close()


if __name__ == "__main__":
    main()
