"""Silero VAD v6 behind `engine.ports.VadModel`: the ONNX file faster-whisper bundles.

Run by our own onnxruntime session (`adapters.onnx`) so its threading is
ours to choose; the state machine on top is `engine.vad`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from adapters.onnx import onnx_session
from engine.arrays import Float32Array

__all__ = ["SileroVadModel", "bundled_vad_model_path"]

logger = logging.getLogger(__name__)


def bundled_vad_model_path() -> Path:
    """Path of the Silero VAD v6 ONNX file shipped inside faster-whisper."""
    import faster_whisper

    return Path(os.path.dirname(faster_whisper.__file__), "assets", "silero_vad_v6.onnx")


class SileroVadModel:
    """A shareable, stateless Silero VAD v6 session (thread-safe `run`)."""

    def __init__(self, path: Path | None = None) -> None:
        model_path = path or bundled_vad_model_path()
        self._session = onnx_session(model_path)
        logger.debug("loaded Silero VAD from %s", model_path)

    def run(
        self, inputs: Float32Array, h: Float32Array, c: Float32Array
    ) -> tuple[Float32Array, Float32Array, Float32Array]:
        """Speech probabilities of consecutive [n, 64+512] windows.

        The rows are one sequence: the LSTM state flows from row to row and
        the returned (h, c) continue after the last one.
        """
        probs, h_out, c_out = self._session.run(None, {"input": inputs, "h": h, "c": c})
        return (
            np.asarray(probs, dtype=np.float32).reshape(-1),
            np.asarray(h_out, dtype=np.float32),
            np.asarray(c_out, dtype=np.float32),
        )
