"""Int8 NanoDet-m by static quantization, judged on photos it was not calibrated on.

    PYTHONPATH=/tmp/onnxpkgs .venv/bin/python scripts/quantize_detector.py [PHOTOS_DIR]

(onnxruntime's quantization tools need the ``onnx`` package, which the project
does not: ``pip install --target /tmp/onnxpkgs onnx``, then delete the numpy
it pulls in so the venv's own is used.)

Two folds: the photos sorted by name, even positions and odd positions. Fold A's
int8 model is calibrated on the even photos (each photo's full frame and its
person-pass crops, preprocessed exactly as ``NanoDetDetector`` does) and
evaluated on the odd ones; fold B the other way round. So every photo is
scored by an int8 model that never saw it, and the per-class table covers all
photos, like ``scripts/eval_detector.py``'s. The fp32 model is scored on the
same photos, timed alternately with int8 in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from adapters.detectors import DEFAULT_NANODET_PATH, NanoDetDetector
from engine.detector import Candidates
from eval_detector import ClassStats, evaluate, load_photos, print_table

REPO = Path(__file__).resolve().parents[1]

Photo = tuple[str, dict[str, object], np.ndarray]


class _Recorder(NanoDetDetector):
    """Runs the fp32 pipeline and keeps every network input it builds."""

    blobs: list[np.ndarray]

    def _candidates(self, rgb: np.ndarray) -> Candidates:
        from adapters.detectors import _NANODET_MEAN_BGR, _NANODET_SIZE, _NANODET_STD_BGR, letterbox

        canvas, _ = letterbox(rgb, _NANODET_SIZE, pad_value=0)
        chw = ((canvas[:, :, ::-1].astype(np.float32) - _NANODET_MEAN_BGR) / _NANODET_STD_BGR)
        self.blobs.append(np.ascontiguousarray(chw.transpose(2, 0, 1)[None]))
        return super()._candidates(rgb)


class _Reader(CalibrationDataReader):
    def __init__(self, blobs: Sequence[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(blobs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        blob = next(self._items, None)
        return None if blob is None else {"image": blob}


def calibration_blobs(photos: Sequence[Photo]) -> list[np.ndarray]:
    recorder = _Recorder(DEFAULT_NANODET_PATH, person_pass=True)
    recorder.blobs = []
    for _, _, rgb in photos:
        recorder.detect(rgb)
    return recorder.blobs


def quantize(
    photos: Sequence[Photo], out: Path, method: CalibrationMethod, per_channel: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(DEFAULT_NANODET_PATH), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Reader(calibration_blobs(photos)),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            # No VNNI on this CPU (AVX2 only): u8s8 with 7-bit weights avoids saturation.
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method,
            # Only the convolutions (nearly all the time). Left to its defaults the tool
            # also quantizes the Pad nodes tf2onnx emits, calibrates their output to
            # the range [0, 0] and divides by that zero scale: the model finds nothing.
            op_types_to_quantize=["Conv"],
        )


def merge(parts: Sequence[dict[str, ClassStats]]) -> dict[str, ClassStats]:
    total = {label: ClassStats() for label in parts[0]}
    for part in parts:
        for label, s in part.items():
            t = total[label]
            t.boxes += s.boxes
            t.matched += s.matched
            t.photos += s.photos
            t.photos_hit += s.photos_hit
            t.negatives += s.negatives
            t.false_alarms += s.false_alarms
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "photos", nargs="?", type=Path, default=REPO.parent / "shared" / "testdata" / "photos"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/nanodet-int8"))
    parser.add_argument("--method", choices=[m.name for m in CalibrationMethod], default="MinMax")
    parser.add_argument("--per-channel", action="store_true")
    args = parser.parse_args()
    photos = sorted(load_photos(args.photos), key=lambda p: p[0])
    folds = {"A": (photos[0::2], photos[1::2]), "B": (photos[1::2], photos[0::2])}
    args.out.mkdir(parents=True, exist_ok=True)
    fp32: list[dict[str, ClassStats]] = []
    int8: list[dict[str, ClassStats]] = []
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for fold, (calibrate, judge) in folds.items():
        model = args.out / f"nanodet-m-416-int8-fold{fold}.onnx"
        quantize(calibrate, model, CalibrationMethod[args.method], args.per_channel)
        print(f"fold {fold}: calibrated on {len(calibrate)} photos -> {model}", flush=True)
        detectors = {"fp32": NanoDetDetector(DEFAULT_NANODET_PATH), "int8": NanoDetDetector(model)}
        for name in ("fp32", "int8") if fold == "A" else ("int8", "fp32"):  # alternate
            stats, t = evaluate(detectors[name], judge)
            (fp32 if name == "fp32" else int8).append(stats)
            times[name] += t
    print_table("fp32, all photos", merge(fp32), times["fp32"])
    print_table("int8, each photo by the fold not calibrated on it", merge(int8), times["int8"])
    print(f"\nint8 / fp32 mean time per detect(): {np.mean(times['int8']) / np.mean(times['fp32']):.2f}")
    network_time(DEFAULT_NANODET_PATH, args.out / "nanodet-m-416-int8-foldA.onnx")


def network_time(fp32: Path, int8: Path, rounds: int = 20) -> None:
    """One network call on the same input, fp32 and int8 alternating (the
    detect() times above also differ by how many person crops each finds)."""
    from adapters.onnx import onnx_session

    blob = np.random.default_rng(0).normal(size=(1, 3, 416, 416)).astype(np.float32)
    sessions = {"fp32": onnx_session(fp32), "int8": onnx_session(int8)}
    ms: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(rounds + 2):
        for name, session in sessions.items() if i % 2 else reversed(sessions.items()):
            start = time.perf_counter()
            session.run(None, {"image": blob})
            if i >= 2:  # warm-up
                ms[name].append((time.perf_counter() - start) * 1e3)
    f, q = np.median(ms["fp32"]), np.median(ms["int8"])
    print(f"network call, median of {rounds} alternated: fp32 {f:.1f} ms, int8 {q:.1f} ms, "
          f"ratio {q / f:.2f} (min {min(ms['fp32']):.1f} / {min(ms['int8']):.1f})")


if __name__ == "__main__":
    main()
