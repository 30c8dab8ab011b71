"""Measure the proctoring detector on the COCO test photos, with and without the
person-region pass.

    .venv/bin/python scripts/eval_detector.py [PHOTOS_DIR] [--model PATH]

PHOTOS_DIR defaults to ``../shared/testdata/photos`` next to the repo and must hold
``ground_truth.json`` (per photo: ``counts`` and pixel ``boxes_xywh``). For each class
the table gives the ground-truth boxes, how many a same-class detection covers at
IoU >= 0.3 (one detection per box), recall, the photos with that class where it was
found at all, and the false alarms: photos without that class where it was reported.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from adapters.detectors import DEFAULT_NANODET_PATH, NanoDetDetector
from engine.detector import Detection

REPO = Path(__file__).resolve().parents[1]

CLASSES = ("person", "laptop", "cell phone", "tv", "keyboard", "mouse", "remote")
MATCH_IOU = 0.3
TIMING_ROUNDS = 3

Box = tuple[float, float, float, float]


@dataclass
class ClassStats:
    boxes: int = 0
    matched: int = 0
    photos: int = 0
    photos_hit: int = 0
    negatives: int = 0
    false_alarms: list[str] = field(default_factory=list)


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def truth_boxes(record: dict[str, object], label: str) -> list[Box]:
    boxes = record["boxes_xywh"]
    assert isinstance(boxes, list)
    return [
        (x, y, x + w, y + h)
        for b in boxes
        if b["label"] == label and not b["iscrowd"]
        for x, y, w, h in [b["bbox"]]
    ]


def count_matches(truth: list[Box], found: list[Box]) -> int:
    """Greedy one-to-one matching, detections in score order."""
    free = list(truth)
    hits = 0
    for box in found:
        scores = [iou(box, t) for t in free]
        if scores and max(scores) >= MATCH_IOU:
            free.pop(int(np.argmax(scores)))
            hits += 1
    return hits


def score_photo(
    stats: dict[str, ClassStats], name: str, record: dict[str, object], found: list[Detection]
) -> None:
    for label in CLASSES:
        truth = truth_boxes(record, label)
        boxes = [d.box for d in found if d.label == label]
        s = stats[label]
        if truth:
            s.boxes += len(truth)
            s.matched += count_matches(truth, boxes)
            s.photos += 1
            s.photos_hit += bool(boxes)
        else:
            s.negatives += 1
            if boxes:
                s.false_alarms.append(name.split("_")[1].lstrip("0"))


def load_photos(photos: Path) -> list[tuple[str, dict[str, object], np.ndarray]]:
    truth = json.loads((photos / "ground_truth.json").read_text())
    return [
        (name, record, np.asarray(Image.open(photos / name).convert("RGB")))
        for name, record in truth.items()
    ]


def evaluate(
    detector: NanoDetDetector, photos: Sequence[tuple[str, dict[str, object], np.ndarray]]
) -> tuple[dict[str, ClassStats], list[float]]:
    stats = {label: ClassStats() for label in CLASSES}
    times: list[float] = []
    for name, record, rgb in photos:
        detector.detect(rgb)  # warm-up, not timed
        for _ in range(TIMING_ROUNDS):
            start = time.perf_counter()
            found = detector.detect(rgb)
            times.append((time.perf_counter() - start) * 1000)
        score_photo(stats, name, record, found)
    return stats, times


def print_table(title: str, stats: dict[str, ClassStats], times: list[float]) -> None:
    print(f"\n{title}: {np.mean(times):.1f} ms/frame mean, {np.percentile(times, 95):.1f} p95")
    print(f"{'class':<11} {'GT':>3} {'det':>4} {'recall':>6}  {'photos hit':>10}  false alarms")
    for label, s in stats.items():
        recall = f"{s.matched / s.boxes:.2f}" if s.boxes else "-"
        where = f" ({', '.join(s.false_alarms)})" if s.false_alarms else ""
        print(
            f"{label:<11} {s.boxes:>3} {s.matched:>4} {recall:>6}  "
            f"{f'{s.photos_hit}/{s.photos}':>10}  {len(s.false_alarms)}/{s.negatives}{where}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "photos", nargs="?", type=Path, default=REPO.parent / "shared" / "testdata" / "photos"
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_NANODET_PATH)
    args = parser.parse_args()
    photos = load_photos(args.photos)
    print(f"{len(photos)} photos from {args.photos}; model {args.model.name}")
    print(f"det = ground-truth boxes covered by a same-class detection at IoU >= {MATCH_IOU}")
    print("false alarms = photos without the class where it was reported (COCO ids)")
    for person_pass in (False, True):
        detector = NanoDetDetector(args.model, person_pass=person_pass)
        stats, times = evaluate(detector, photos)
        print_table(f"person_pass={person_pass}", stats, times)


if __name__ == "__main__":
    main()
