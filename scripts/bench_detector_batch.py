"""Would batching frames of several sessions into one NanoDet call pay? Batch 1 vs 2 vs 4.

    PYTHONPATH=/tmp/onnxpkgs .venv/bin/python scripts/bench_detector_batch.py

(needs the ``onnx`` package, see ``scripts/quantize_detector.py``.) The shipped
export has a fixed batch of 1 (input ``1x3x416x416``) and its six output Reshapes
take shapes computed from batch-1 constants, so this script makes a copy with a
free batch dimension only to *time* the network: batch 2 runs, but its outputs
come out folded into one image's layout and do not match two batch-1 calls
(printed below), so a real batched detector would need the export redone.
Timing: one onnxruntime thread, as served; sizes alternate round by round.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from adapters.detectors import DEFAULT_NANODET_PATH
from adapters.onnx import onnx_session

ROUNDS = 8


def free_batch_copy(path: Path) -> None:
    model = onnx.load(str(DEFAULT_NANODET_PATH))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 416, 416)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        batched_path = Path(tmp) / "nanodet-batch.onnx"
        free_batch_copy(batched_path)
        single, batched = onnx_session(DEFAULT_NANODET_PATH), onnx_session(batched_path)
        out = batched.run(None, {"image": x[:2]})
        ref = [single.run(None, {"image": x[i : i + 1]}) for i in range(2)]
        print("batch-2 output shapes:", [o.shape for o in out])
        diff = max(
            float(np.abs(o[0, i * (o.shape[1] // 2) : (i + 1) * (o.shape[1] // 2)] - r[i][k][0]).max())
            for k, o in enumerate(out) for i in range(2) for r in [ref]
        )
        print(f"max abs difference, batch-2 halves vs two batch-1 calls: {diff:.3f}")
        ms: dict[int, list[float]] = {1: [], 2: [], 4: []}
        for r in range(ROUNDS + 1):
            for b in (1, 2, 4) if r % 2 else (4, 2, 1):
                session = single if b == 1 else batched
                start = time.perf_counter()
                for _ in range(4 // b):  # four images per round at every size
                    session.run(None, {"image": x[:b]})
                if r:  # the first round warms up
                    ms[b].append((time.perf_counter() - start) * 1e3 / 4)
    base = float(np.median(ms[1]))
    for b, values in ms.items():
        med = float(np.median(values))
        print(f"batch {b}: {med:.1f} ms per image (median of {ROUNDS} rounds, min {min(values):.1f}), "
              f"{med / base:.2f} x batch 1")


if __name__ == "__main__":
    main()
