"""The one way this project opens an ONNX model: a quiet, single-threaded session.

The media layer owns parallelism (one executor per model, sized for it), so
each session runs on its own `threads` intra-op threads, one inter-op
thread, and never spins: spinning threads burn a core waiting for work that
comes every 32 ms (VAD) or every half second (detector).
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

__all__ = ["ERRORS_ONLY", "onnx_session"]

ERRORS_ONLY = 3  # onnxruntime's log severity: 0 verbose ... 3 error, 4 fatal
_GPU_FIRST = ("CUDAExecutionProvider", "CPUExecutionProvider")


def onnx_session(
    model_path: Path | str,
    *,
    threads: int = 1,
    use_gpu: bool = False,
    log_severity: int | None = ERRORS_ONLY,
) -> ort.InferenceSession:
    """An inference session on `threads` threads without spinning.

    `use_gpu` takes CUDA when this onnxruntime build has it, else the CPU;
    without it the session is CPU-only. `log_severity=None` leaves the
    session on onnxruntime's default logger (warnings and up).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if log_severity is not None:
        options.log_severity_level = log_severity
    if use_gpu:
        available = ort.get_available_providers()
        providers = [p for p in _GPU_FIRST if p in available]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
