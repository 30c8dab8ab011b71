"""The array types the engine, the adapters and the media layer pass around."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Float32Array", "Int16Array", "IntArray", "RgbImage"]

Float32Array = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]  # PCM
IntArray = npt.NDArray[np.intp]
RgbImage = npt.NDArray[np.uint8]  # height x width x 3
