"""Proctoring object detection as plain data: what a detector finds, and how.

An H×W×3 ``uint8`` RGB array goes in, a list of frozen ``Detection``
records comes out. The networks (NanoDet-m 416 and YOLOv8/YOLO11 ONNX
exports) are in ``adapters.detectors``; this module has what they share,
all numpy: decoding their heads, per-class thresholds, non-maximum
suppression, and ``DetectorPipeline``, the detection pass that runs a
network's raw candidates through them.

Phones are small in a webcam frame and a 416 px detector barely sees them. With
``person_pass=True`` the pipeline looks again at the upper part of each person
(enlarged to the model's full input), and merges the phones it finds there into
the first pass. See ``scripts/eval_detector.py`` for what this buys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.arrays import Float32Array, IntArray, RgbImage

__all__ = [
    "COCO_LABELS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THRESHOLDS",
    "NANODET_REG_MAX",
    "NMS_IOU",
    "Candidates",
    "Detection",
    "DetectorPipeline",
    "batched_nms",
    "decode_nanodet",
    "decode_yolo",
    "nms",
]


COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
_LABEL_INDEX = {label: i for i, label in enumerate(COCO_LABELS)}
_PERSON = _LABEL_INDEX["person"]

# Measured on the 20 COCO photos of shared/testdata (scripts/eval_detector.py):
# NanoDet-m gives a clear person 0.6-0.9 but a held phone only 0.25-0.5 (best after
# the person pass), while cameras and desk phones reach 0.33: hence 0.3 for phones.
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "person": 0.35,
    "cell phone": 0.3,
    "laptop": 0.35,
    "tv": 0.35,
}
DEFAULT_THRESHOLD = 0.35
NMS_IOU = 0.6

# The person-region pass looks again at the upper part of each person's box
# (head, hands, lap: where a phone in use is), grown by a margin, for the classes
# below. Tiny people are skipped: blowing up a few pixels only invents objects.
_REGION_MAX_PEOPLE = 3
_REGION_UPPER = 0.75
_REGION_MARGIN = 0.15
_REGION_MIN_SIDE = 64
_REGION_LABELS = ("cell phone",)

# NanoDet's box sides are distributions over this many bins, minus one.
NANODET_REG_MAX = 10


@dataclass(frozen=True)
class Detection:
    """One detected object; ``box`` is (x1, y1, x2, y2) in input-image pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def describe(self) -> str:
        """``"person 0.95"``: label and score to two decimals."""
        return f"{self.label} {self.score:.2f}"


@dataclass(frozen=True)
class Candidates:
    """Raw boxes before thresholds: ``boxes`` (N, 4) xyxy, ``scores``, ``classes``."""

    boxes: Float32Array
    scores: Float32Array
    classes: IntArray

    @staticmethod
    def empty() -> Candidates:
        """No candidates."""
        return Candidates(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.intp)
        )

    @staticmethod
    def concat(parts: Sequence[Candidates]) -> Candidates:
        """All candidates of ``parts`` in one set."""
        if not parts:
            return Candidates.empty()
        return Candidates(
            np.concatenate([p.boxes for p in parts]).astype(np.float32),
            np.concatenate([p.scores for p in parts]).astype(np.float32),
            np.concatenate([p.classes for p in parts]).astype(np.intp),
        )

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Candidates:
        """The candidates selected by an index array or boolean mask."""
        return Candidates(self.boxes[index], self.scores[index], self.classes[index])

    def shifted(self, dx: float, dy: float) -> Candidates:
        """The same candidates with boxes moved by (dx, dy)."""
        offset = np.array([dx, dy, dx, dy], np.float32)
        return Candidates(self.boxes + offset, self.scores, self.classes)


def _above(boxes: Float32Array, class_scores: Float32Array, min_score: float) -> Candidates:
    """Every (box, class) pair scoring above ``min_score`` (multi-label)."""
    rows, cols = np.nonzero(class_scores > min_score)
    return Candidates(
        boxes[rows].astype(np.float32),
        class_scores[rows, cols].astype(np.float32),
        cols.astype(np.intp),
    )


def _softmax(x: Float32Array) -> Float32Array:
    e: Float32Array = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


def decode_nanodet(
    outputs: Mapping[int, tuple[Float32Array, Float32Array]], input_size: int, min_score: float
) -> Candidates:
    """Decode NanoDet heads into boxes in network-input pixels.

    ``outputs`` maps each stride to its (class scores after sigmoid [N, 80], box
    distributions [N, 4 * (reg_max + 1)]) with N = (input_size / stride)², row-major
    over the feature map. Each side's distance (left, top, right, bottom) from the
    anchor centre ((col + 0.5) * stride, (row + 0.5) * stride) is the expectation of
    the softmax over its bins, times the stride.
    """
    parts = []
    bins = np.arange(NANODET_REG_MAX + 1, dtype=np.float32)
    for stride, (scores, dists) in outputs.items():
        keep = (scores > min_score).any(axis=1)
        if not keep.any():
            continue
        cells = input_size // stride
        rows, cols = np.divmod(np.nonzero(keep)[0], cells)
        cx, cy = (cols + 0.5) * stride, (rows + 0.5) * stride
        sides = dists[keep].reshape(-1, 4, NANODET_REG_MAX + 1)
        d = (_softmax(sides) @ bins) * stride
        boxes = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1)
        parts.append(_above(boxes.astype(np.float32), scores[keep], min_score))
    return Candidates.concat(parts)


def decode_yolo(output: Float32Array, min_score: float) -> Candidates:
    """Decode a YOLOv8/YOLO11 output [1, 84, N] (or [84, N]) into xyxy boxes.

    Rows 0-3 are box centre x, centre y, width, height in network-input pixels;
    rows 4-83 are the 80 class scores, already sigmoid-activated.
    """
    table = output.reshape(output.shape[-2], output.shape[-1]).T
    cx, cy, w, h = table[:, 0], table[:, 1], table[:, 2], table[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return _above(boxes.astype(np.float32), table[:, 4:], min_score)


def _iou(box: Float32Array, others: Float32Array) -> Float32Array:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9), dtype=np.float32)


def nms(boxes: Float32Array, scores: Float32Array, iou_threshold: float) -> IntArray:
    """Indices of the boxes greedy non-maximum suppression keeps, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, order = int(order[0]), order[1:]
        keep.append(best)
        order = order[_iou(boxes[best], boxes[order]) <= iou_threshold]
    return np.array(keep, dtype=np.intp)


def batched_nms(candidates: Candidates, iou_threshold: float) -> Candidates:
    """Per-class NMS: boxes of different classes never suppress each other."""
    if not candidates.scores.size:
        return candidates
    # Shifting each class into its own far-apart region makes one NMS run per-class.
    span = float(candidates.boxes.max()) + 1.0
    offsets = (candidates.classes.astype(np.float32) * span)[:, None]
    keep = nms(candidates.boxes + offsets, candidates.scores, iou_threshold)
    return candidates.take(keep)


def _class_thresholds(thresholds: Mapping[str, float], default: float) -> Float32Array:
    """Per-class threshold vector; rejects unknown labels and out-of-range values."""
    unknown = sorted(set(thresholds) - set(_LABEL_INDEX))
    if unknown:
        raise ValueError(f"unknown detector labels {unknown}; use COCO names")
    for label, value in {**thresholds, "(default)": default}.items():
        if not 0.0 < value <= 1.0:
            raise ValueError(f"threshold for {label} must be in (0, 1], got {value}")
    table = np.full(len(COCO_LABELS), default, dtype=np.float32)
    for label, value in thresholds.items():
        table[_LABEL_INDEX[label]] = value
    return table


def _person_region(box: Float32Array, width: int, height: int) -> tuple[int, int, int, int]:
    """The upper part of a person ``box``, grown by a margin, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    y2 = y1 + (y2 - y1) * _REGION_UPPER
    mx, my = (x2 - x1) * _REGION_MARGIN, (y2 - y1) * _REGION_MARGIN
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(width, int(np.ceil(x2 + mx))), min(height, int(np.ceil(y2 + my)))
    return left, top, right, bottom


class DetectorPipeline:
    """Shared pass: thresholds, optional person-region pass, NMS, Detections.

    Subclasses (the networks in ``adapters.detectors``) supply
    ``_candidates``: raw boxes for one image, in its pixels, scoring at
    least ``_min_score``.
    """

    def __init__(
        self,
        thresholds: Mapping[str, float],
        default_threshold: float,
        person_pass: bool,
    ) -> None:
        self._thresholds = _class_thresholds(thresholds, default_threshold)
        self._min_score = float(self._thresholds.min())
        self._person_pass = person_pass
        self._region_classes = np.array([_LABEL_INDEX[x] for x in _REGION_LABELS])

    def detect(self, rgb: RgbImage) -> list[Detection]:
        """Objects in an H×W×3 ``uint8`` RGB image of any size, best first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        found = self._confident(batched_nms(self._candidates(rgb), NMS_IOU))
        if self._person_pass:
            found = self._with_person_regions(rgb, found)
        return self._to_detections(found, rgb.shape[1], rgb.shape[0])

    def _candidates(self, rgb: RgbImage) -> Candidates:
        raise NotImplementedError

    def _confident(self, candidates: Candidates) -> Candidates:
        return candidates.take(candidates.scores >= self._thresholds[candidates.classes])

    def _with_person_regions(self, rgb: RgbImage, found: Candidates) -> Candidates:
        """Add the devices found by looking again, enlarged, around each person."""
        height, width = rgb.shape[:2]
        people = found.take(found.classes == _PERSON)
        parts = [found]
        for box in people.boxes[:_REGION_MAX_PEOPLE]:
            left, top, right, bottom = _person_region(box, width, height)
            if max(right - left, bottom - top) < _REGION_MIN_SIDE:
                continue
            crop = np.ascontiguousarray(rgb[top:bottom, left:right])
            extra = self._confident(self._candidates(crop))
            extra = extra.take(np.isin(extra.classes, self._region_classes))
            parts.append(extra.shifted(left, top))
        return batched_nms(Candidates.concat(parts), NMS_IOU) if len(parts) > 1 else found

    @staticmethod
    def _to_detections(found: Candidates, width: int, height: int) -> list[Detection]:
        boxes = np.clip(found.boxes, 0, [width, height, width, height])
        order = np.argsort(-found.scores, kind="stable")
        return [
            Detection(
                COCO_LABELS[int(found.classes[i])],
                float(found.scores[i]),
                (float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
            )
            for i in order
        ]
