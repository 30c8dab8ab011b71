"""The proctoring detector's networks: NanoDet-m and YOLO ONNX exports on onnxruntime.

Both implement `engine.ports.Detector` on top of `engine.detector`'s
`DetectorPipeline` (thresholds, person-region pass, NMS): each only turns
an RGB image into raw candidates with its own network.

- ``NanoDetDetector``: NanoDet-m 416 (COCO-80), shipped in ``models/``. The
  default.
- ``YoloDetector``: a YOLOv8/YOLO11 ONNX export that the user supplies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from adapters.onnx import onnx_session
from engine.arrays import Float32Array, RgbImage
from engine.detector import (
    COCO_LABELS,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLDS,
    NANODET_REG_MAX,
    Candidates,
    DetectorPipeline,
    decode_nanodet,
    decode_yolo,
)
from engine.ports import Detector

__all__ = [
    "DEFAULT_NANODET_PATH",
    "Letterbox",
    "NanoDetDetector",
    "YoloDetector",
    "letterbox",
    "load_detector",
]


DEFAULT_NANODET_PATH = Path(__file__).resolve().parents[1] / "models" / "nanodet-m-416.onnx"

_NANODET_SIZE = 416
_NANODET_STRIDES = (8, 16, 32)
# NanoDet was trained on BGR images normalized with these per-channel statistics.
_NANODET_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
_NANODET_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
_YOLO_SIZE = 640
_YOLO_PAD = 114


def _network_session(model_path: Path | str) -> ort.InferenceSession:
    """CUDA when this onnxruntime build has it; onnxruntime's default logging."""
    return onnx_session(model_path, use_gpu=True, log_severity=None)


@dataclass(frozen=True)
class Letterbox:
    """How an image was scaled and padded into a square network input."""

    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, boxes: Float32Array) -> Float32Array:
        """Boxes in network-input pixels mapped back to image pixels."""
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        return ((boxes - offset) / self.scale).astype(np.float32)


def letterbox(rgb: RgbImage, size: int, pad_value: int) -> tuple[RgbImage, Letterbox]:
    """Resize ``rgb`` to fit a ``size``×``size`` square, keep its aspect, centre it."""
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(scale, float(pad_x), float(pad_y))


class NanoDetDetector(DetectorPipeline):
    """NanoDet-m 416 (the shipped default), with per-class thresholds.

    ``thresholds`` maps COCO labels to their minimum score; other classes use
    ``default_threshold``. ``person_pass`` turns on the second, enlarged look
    around each person (more phones found, one more inference per person).
    """

    def __init__(
        self,
        model_path: Path | str = DEFAULT_NANODET_PATH,
        thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
        default_threshold: float = DEFAULT_THRESHOLD,
        *,
        person_pass: bool = True,
    ) -> None:
        super().__init__(thresholds, default_threshold, person_pass)
        self._session = _network_session(model_path)
        self._input_name = self._session.get_inputs()[0].name
        self._heads = self._match_heads()

    def _match_heads(self) -> dict[int, tuple[str, str]]:
        """Output names per stride, found by shape so any NanoDet export fits."""
        shapes = {o.name: tuple(o.shape) for o in self._session.get_outputs()}
        heads = {}
        for stride in _NANODET_STRIDES:
            n = (_NANODET_SIZE // stride) ** 2
            cls = [k for k, s in shapes.items() if s[-2:] == (n, len(COCO_LABELS))]
            reg = [k for k, s in shapes.items() if s[-2:] == (n, 4 * (NANODET_REG_MAX + 1))]
            if len(cls) != 1 or len(reg) != 1:
                raise ValueError(f"not a NanoDet-m {_NANODET_SIZE} model: outputs {shapes}")
            heads[stride] = (cls[0], reg[0])
        return heads

    def _candidates(self, rgb: RgbImage) -> Candidates:
        canvas, placement = letterbox(rgb, _NANODET_SIZE, pad_value=0)
        bgr = canvas[:, :, ::-1].astype(np.float32)
        chw = ((bgr - _NANODET_MEAN_BGR) / _NANODET_STD_BGR).transpose(2, 0, 1)
        blob = np.ascontiguousarray(chw[None])
        names = [name for pair in self._heads.values() for name in pair]
        values = dict(zip(names, self._session.run(names, {self._input_name: blob})))
        heads = {s: (values[c][0], values[r][0]) for s, (c, r) in self._heads.items()}
        found = decode_nanodet(heads, _NANODET_SIZE, self._min_score)
        return Candidates(placement.to_image(found.boxes), found.scores, found.classes)


class YoloDetector(DetectorPipeline):
    """A user-supplied YOLOv8/YOLO11 COCO export: input 1×3×640×640 RGB/255."""

    def __init__(
        self,
        model_path: Path | str,
        thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
        default_threshold: float = DEFAULT_THRESHOLD,
        *,
        person_pass: bool = False,
    ) -> None:
        super().__init__(thresholds, default_threshold, person_pass)
        self._session = _network_session(model_path)
        self._input_name = self._session.get_inputs()[0].name

    def _candidates(self, rgb: RgbImage) -> Candidates:
        canvas, placement = letterbox(rgb, _YOLO_SIZE, pad_value=_YOLO_PAD)
        blob = np.ascontiguousarray((canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        output = self._session.run(None, {self._input_name: blob})[0]
        found = decode_yolo(np.asarray(output, np.float32), self._min_score)
        return Candidates(placement.to_image(found.boxes), found.scores, found.classes)


def load_detector(
    kind: str,
    path: str | None = None,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
    default_threshold: float = DEFAULT_THRESHOLD,
    *,
    person_pass: bool | None = None,
) -> Detector:
    """Build a detector by kind: ``"nanodet"`` (path optional) or ``"yolo"``.

    ``person_pass=None`` keeps each kind's default: on for NanoDet (measured), off
    for YOLO (its 640 px input already resolves more; not measured here).
    """
    if kind == "nanodet":
        return NanoDetDetector(
            path or DEFAULT_NANODET_PATH,
            thresholds,
            default_threshold,
            person_pass=True if person_pass is None else person_pass,
        )
    if kind == "yolo":
        if not path:
            raise ValueError("the yolo detector needs the path of a YOLOv8/YOLO11 ONNX export")
        return YoloDetector(path, thresholds, default_threshold, person_pass=bool(person_pass))
    raise ValueError(f"unknown detector kind {kind!r}; expected 'nanodet' or 'yolo'")
