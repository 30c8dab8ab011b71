"""Smart Turn v3.2 behind `engine.ports.TurnModel`: is the speaker done?

The ONNX file is pipecat's (BSD-2-Clause), copied unchanged from the
`pipecat-ai==1.14.0` wheel into `models/` (models/PROVENANCE.md); pipecat
itself is not a dependency. Its input is 8 s of 16 kHz audio as Whisper
log-mel features (80 bins, 800 frames): the audio is zero-padded in front,
normalised to zero mean and unit variance, then put through
faster-whisper's own feature extractor, which gives the features pipecat's
vendored extractor gives (max difference 3e-6, checked when this was
written). Output: P(complete), a sigmoid already applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from adapters.onnx import onnx_session
from engine.arrays import Float32Array

__all__ = ["SMART_TURN_PATH", "SmartTurnModel"]

log = logging.getLogger(__name__)

SMART_TURN_PATH = Path(__file__).resolve().parent.parent / "models" / "smart-turn-v3.2-cpu.onnx"
_SECONDS = 8
_SAMPLES = _SECONDS * 16_000


class SmartTurnModel:
    """A shareable Smart Turn v3.2 session (thread-safe `probability`)."""

    def __init__(self, path: Path | None = None, threads: int = 1) -> None:
        model_path = path or SMART_TURN_PATH
        self._session = onnx_session(model_path, threads=threads)
        self._features = FeatureExtractor(feature_size=80, chunk_length=_SECONDS)
        log.debug("loaded Smart Turn from %s", model_path)

    def probability(self, audio: Float32Array) -> float:
        x = np.asarray(audio, dtype=np.float32)[-_SAMPLES:]
        if len(x) < _SAMPLES:
            x = np.pad(x, (_SAMPLES - len(x), 0))
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        features = self._features(x, padding=0)[:, : _SECONDS * 100].astype(np.float32)
        (out,) = self._session.run(None, {"input_features": features[None]})
        return float(np.asarray(out).reshape(-1)[0])
