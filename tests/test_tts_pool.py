"""Piper out of process: the worker pool, its restarts and fallback, and the sentence cache.

The workers are real `python -m adapters.piper_worker` programs; the
crashes are real SIGKILLs, sent by the test or by the worker itself
(`--crash-on WORD`) after it has read the request.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import generate_latest

from adapters.tts import EspeakSynthesizer
from adapters.tts_cache import CachedSynthesizer
from adapters.tts_pool import PiperPool, WorkerFailed
from config import Config, ConfigError
from engine.conversation import Spoken
from engine.resample import resample_to_48k
from media.metrics import MediaMetrics
from media.runtime import MediaModels, MediaRuntime
from media.voice_track import InterviewerTrack, InterviewerVoice, trim_leading_silence

Int16Array = npt.NDArray[np.int16]
LONG = " ".join(
    f"Sentence number {i} describes one more part of the system you designed." for i in range(12)
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng binary not on PATH (apt-get install espeak-ng)",
)


@pytest.fixture
def pool() -> Iterator[PiperPool]:
    synthesizer = PiperPool(1)
    yield synthesizer
    synthesizer.close()


def rms(pcm: Int16Array) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


# --- the pool -------------------------------------------------------------------


def test_pool_speaks_without_piper_in_this_process() -> None:
    # A fresh interpreter: other tests here import Piper in-process on purpose.
    script = (
        "import sys\n"
        "from adapters.tts import load_synthesizer\n"
        "voice = load_synthesizer('piper')\n"
        "pcm = voice.synthesize('Tell me about a project you are proud of.')\n"
        "assert pcm.size > voice.sample_rate, pcm.size\n"
        "assert not [m for m in sys.modules if m == 'piper' or m.startswith('piper.')]\n"
        "voice.close()\n"
        "print('ok', voice.sample_rate)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "22050"]


def test_pool_speaks_a_sentence(pool: PiperPool) -> None:
    assert pool.sample_rate == 22_050
    pcm = pool.synthesize("Tell me about a project you are proud of.")
    assert pcm.dtype == np.int16 and 1.0 < len(pcm) / pool.sample_rate < 5.0
    assert rms(pcm) > 1000
    assert pool.synthesize("  ").size == 0


def test_worker_killed_mid_sentence_is_restarted(pool: PiperPool) -> None:
    first_pid = pool.pids[0]
    result: list[Int16Array] = []
    speaker = threading.Thread(target=lambda: result.append(pool.synthesize(LONG)))
    speaker.start()
    deadline = time.monotonic() + 10
    while not pool.busy_pids and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(first_pid, signal.SIGKILL)
    speaker.join(60)
    assert pool.restarts == 1 and pool.fallbacks == 0
    assert pool.pids and pool.pids[0] != first_pid
    assert len(result[0]) / pool.sample_rate > 20  # the whole text, said again
    assert rms(pool.synthesize("And the next question.")) > 1000


def test_worker_dying_while_idle_is_restarted_before_the_next_sentence(pool: PiperPool) -> None:
    first_pid = pool.pids[0]
    pool.synthesize("Tell me about a project you are proud of.")
    spent = pool.cpu_seconds  # the voice's CPU (interview_cpu_seconds_total{stage="voice"})
    assert spent > 0
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while pool.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.restarts == 1 and pool.pids[0] != first_pid
    assert rms(pool.synthesize("Ready when you are.")) > 1000
    assert pool.restarts == 1 and pool.fallbacks == 0
    assert pool.cpu_seconds > spent  # the killed program's CPU is still counted


@needs_espeak
def test_worker_failing_twice_falls_back_to_espeak() -> None:
    pool = PiperPool(1, fallback=EspeakSynthesizer(), worker_args=("--crash-on", "zebra"))
    try:
        pcm = pool.synthesize("A zebra crossed the road.")
        assert pool.restarts == 2 and pool.fallbacks == 1
        assert rms(pcm) > 500
        assert rms(pool.synthesize("The next sentence is Piper again.")) > 1000
        assert pool.fallbacks == 1
    finally:
        pool.close()


def test_worker_failing_twice_without_fallback_raises() -> None:
    pool = PiperPool(1, worker_args=("--crash-on", "zebra"))
    try:
        with pytest.raises(WorkerFailed):
            pool.synthesize("A zebra.")
        assert rms(pool.synthesize("Still here.")) > 1000
    finally:
        pool.close()


def test_two_workers_serve_two_sentences_at_once() -> None:
    pool = PiperPool(2)
    try:
        assert len(set(pool.pids)) == 2
        with ThreadPoolExecutor(2) as threads:
            outs = list(threads.map(pool.synthesize, ["First one here.", "Second one there."]))
        assert all(rms(pcm) > 1000 for pcm in outs)
    finally:
        pool.close()
    assert pool.pids == []
    pool.close()  # idempotent


async def play(
    voice: InterviewerVoice, track: InterviewerTrack, sentences: list[str], *, timeout: float
) -> Spoken:
    """Have `voice` say `sentences` while a listener drains `track`."""
    async def said() -> AsyncIterator[str]:
        for sentence in sentences:
            yield sentence

    async def listen() -> None:
        while True:
            await track.recv()

    listener = asyncio.create_task(listen(), name="listener")
    try:
        return await asyncio.wait_for(voice.say(said()), timeout)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


@needs_espeak
async def test_interviewer_voice_goes_on_after_a_crash() -> None:
    pool = PiperPool(1, fallback=EspeakSynthesizer(), worker_args=("--crash-on", "zebra"))
    track = InterviewerTrack()
    executor = ThreadPoolExecutor(1)
    voice = InterviewerVoice(track, CachedSynthesizer(pool), executor)
    sentences = ["Thanks for joining.", "A zebra crossed.", "Tell me about your role."]
    try:
        spoken = await play(voice, track, sentences, timeout=60)
    finally:
        executor.shutdown()
        pool.close()
    assert spoken.text == " ".join(sentences) and not spoken.interrupted
    assert pool.fallbacks == 1 and track.voiced_frames_sent * 0.02 == pytest.approx(spoken.audio_s, abs=0.06)


def test_a_reply_starts_at_its_first_sound(pool: PiperPool) -> None:
    pcm = resample_to_48k(pool.synthesize("Thank you."), pool.sample_rate)
    trimmed = trim_leading_silence(pcm)
    cut = len(pcm) - len(trimmed)
    assert 0.02 * 48_000 < cut <= 0.08 * 48_000  # Piper's own lead: 30-70 ms here
    assert np.array_equal(trimmed, pcm[cut:])
    # What went was silence; 10 ms of it are left before the first sound.
    peak = np.abs(pcm.astype(np.int32)).max()
    assert np.abs(pcm[:cut].astype(np.int32)).max() < 0.01 * peak
    assert np.abs(trimmed[:480].astype(np.int32)).max() < 0.01 * peak
    silence = np.zeros(960, np.int16)
    assert trim_leading_silence(silence) is silence and len(trim_leading_silence(silence[:0])) == 0
    late = np.concatenate([np.zeros(48_000, np.int16), pcm])  # never more than 80 ms
    assert len(late) - len(trim_leading_silence(late)) == 0.08 * 48_000


class QuietStart:
    """Our own seam (engine.ports.Synthesizer): 50 ms of silence, then 100 ms of tone."""

    sample_rate = 48_000

    def synthesize(self, text: str) -> Int16Array:
        tone = (8000 * np.sin(np.arange(4800) / 8)).astype(np.int16)
        return np.concatenate([np.zeros(2400, np.int16), tone])


async def test_only_a_replys_first_sentence_is_trimmed() -> None:
    track = InterviewerTrack()
    with ThreadPoolExecutor(1) as executor:
        voice = InterviewerVoice(track, QuietStart(), executor)
        spoken = await play(voice, track, ["One.", "Two."], timeout=10)
    # 150 ms each, less 40 ms (50 ms of lead to 10 ms) off the first only.
    assert spoken.audio_s == pytest.approx(0.11 + 0.15, abs=1e-4)


# --- the cache ------------------------------------------------------------------


class CountingVoice:
    sample_rate = 16_000
    voice_name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        self.fall_back_on: str | None = None

    def synthesize(self, text: str) -> Int16Array:
        return self.speak(text)[0]

    def speak(self, text: str) -> tuple[Int16Array, str]:
        self.calls += 1
        voice = "fallback" if text == self.fall_back_on else self.voice_name
        return np.full(len(text), self.calls, np.int16), voice


def test_cache_serves_a_sentence_said_before() -> None:
    inner = CountingVoice()
    cache = CachedSynthesizer(inner, max_entries=2)
    first = cache.synthesize("Thank you.")
    assert np.array_equal(cache.synthesize(" Thank you. "), first)
    assert (cache.hits, cache.misses, inner.calls) == (1, 1, 1)
    assert not first.flags.writeable  # shared: nobody may change it


def test_cache_forgets_the_least_recently_used() -> None:
    inner = CountingVoice()
    cache = CachedSynthesizer(inner, max_entries=2)
    for text in ("one", "two", "one", "three", "one", "two"):
        cache.synthesize(text)
    # "two" was evicted by "three" (the least recently used), "one" never.
    assert (cache.hits, cache.misses, inner.calls) == (2, 4, 4)


def test_cache_does_not_keep_fallback_audio() -> None:
    inner = CountingVoice()
    inner.fall_back_on = "Goodbye!"
    cache = CachedSynthesizer(inner)
    cache.synthesize("Goodbye!")
    inner.fall_back_on = None
    cache.synthesize("Goodbye!")
    assert (cache.hits, cache.misses) == (0, 2)
    cache.synthesize("Goodbye!")
    assert cache.hits == 1


def test_cache_counters_are_exported() -> None:
    cache = CachedSynthesizer(CountingVoice())
    for _ in range(3):
        cache.synthesize("Thank you.")
    metrics = MediaMetrics()
    models = MediaModels(None, None, None, "none", cache)  # type: ignore[arg-type]
    runtime = MediaRuntime.from_config(Config(), models, metrics)
    runtime.shutdown()
    text = generate_latest(metrics.registry).decode()
    assert "interview_tts_cache_hits_total 2.0" in text
    assert "interview_tts_cache_misses_total 1.0" in text


def test_warming_fills_the_cache_without_counting_a_miss() -> None:
    inner = CountingVoice()
    cache = CachedSynthesizer(inner)
    assert cache.warm("Thank you.") and cache.warm(" Thank you. ")
    cache.synthesize("Thank you.")
    assert (cache.warmed, cache.hits, cache.misses, inner.calls) == (1, 1, 0, 1)
    inner.fall_back_on = "Goodbye!"
    assert not cache.warm("Goodbye!")  # fallback audio is not kept, nor counted
    assert cache.warmed == 1


class GatedVoice(CountingVoice):
    """Our own seam (engine.ports.Synthesizer): each sentence waits to be let go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered: list[str] = []
        self.go = threading.Semaphore(0)

    def speak(self, text: str) -> tuple[Int16Array, str]:
        self.entered.append(text)
        assert self.go.acquire(timeout=10)
        return super().speak(text)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_warm_up_waits_while_the_voice_speaks() -> None:
    from engine.interviewer import fixed_phrases

    phrases = fixed_phrases()
    inner = GatedVoice()
    cache = CachedSynthesizer(inner)
    metrics = MediaMetrics()
    # Two Piper workers: a phrase could run beside a live sentence, and must not.
    models = MediaModels(None, None, None, "none", cache)  # type: ignore[arg-type]
    runtime = MediaRuntime.from_config(Config(tts_processes=2), models, metrics)
    loop = asyncio.get_running_loop()
    try:
        live = [loop.run_in_executor(runtime.tts_executor, cache.synthesize, "live 0.")]
        warming = asyncio.create_task(runtime.warm_voice(phrases))
        await asyncio.sleep(0.3)
        assert inner.entered == ["live 0."]  # a thread is free, yet no phrase started
        inner.go.release()
        await until(lambda: len(inner.entered) == 2)  # the first phrase, once idle
        live.append(loop.run_in_executor(runtime.tts_executor, cache.synthesize, "live 1."))
        await until(lambda: len(inner.entered) == 3)  # a live sentence never waits for a turn
        inner.go.release()  # the phrase ends; "live 1." still runs: no phrase starts
        await asyncio.sleep(0.3)
        assert inner.entered == ["live 0.", phrases[0], "live 1."]
        for _ in range(len(phrases)):
            inner.go.release()
        assert await asyncio.wait_for(warming, 10) == len(phrases)
        await asyncio.gather(*live)
        assert inner.entered[3:] == list(phrases[1:])
        # A reply's first sentence is now served from memory.
        cache.synthesize("Thank you.")
        assert (cache.hits, cache.misses) == (1, 2)
        assert await runtime.warm_voice(phrases) == 0  # nothing left to do
    finally:
        runtime.shutdown()
    assert f"interview_tts_cache_warmed_total {len(phrases)}.0" in (
        generate_latest(metrics.registry).decode())


async def test_the_warm_up_stops_when_the_voice_falls_back_and_fills_half_the_cache() -> None:
    from engine.interviewer import fixed_phrases

    phrases = fixed_phrases()
    inner = CountingVoice()
    inner.fall_back_on = phrases[2]
    models = MediaModels(None, None, None, "none", CachedSynthesizer(inner))  # type: ignore[arg-type]
    runtime = MediaRuntime.from_config(Config(), models, MediaMetrics())
    try:
        assert await runtime.warm_voice(phrases) == 2 and inner.calls == 3
        small = CachedSynthesizer(CountingVoice(), max_entries=8)
        runtime.models = MediaModels(None, None, None, "none", small)  # type: ignore[arg-type]
        assert await runtime.warm_voice(phrases) == 4  # the 4 most needed
    finally:
        runtime.shutdown()


async def test_a_cancelled_warm_up_lets_its_phrase_finish() -> None:
    inner = GatedVoice()
    models = MediaModels(None, None, None, "none", CachedSynthesizer(inner))  # type: ignore[arg-type]
    runtime = MediaRuntime.from_config(Config(), models, MediaMetrics())
    try:
        warming = asyncio.create_task(runtime.warm_voice(["One.", "Two."]))
        await until(lambda: inner.entered == ["One."])
        warming.cancel()
        await asyncio.sleep(0.2)
        assert not warming.done()  # the voice may not close under "One."
        inner.go.release()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(warming, 5)
        assert inner.entered == ["One."]  # "Two." never started
    finally:
        runtime.shutdown()


def test_voice_settings_from_the_environment() -> None:
    assert (Config.from_env({}).tts_processes, Config.from_env({}).tts_cache_entries) == (1, 256)
    config = Config.from_env({"TTS_PROCESSES": "3", "TTS_CACHE_ENTRIES": "0"})
    assert (config.tts_processes, config.tts_cache_entries) == (3, 0)
    with pytest.raises(ConfigError, match="TTS_PROCESSES"):
        Config.from_env({"TTS_PROCESSES": "0"})
