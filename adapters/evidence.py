"""Evidence pictures: the analysed frame with the detections boxed, as JPEG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from engine.detector import Detection

__all__ = ["render_evidence"]

_COLOURS = {"person": (0, 200, 0)}
_DEVICE_COLOUR = (230, 40, 40)


def render_evidence(rgb: npt.NDArray[np.uint8], detections: Sequence[Detection]) -> bytes:
    """JPEG of `rgb` with each detection's box and "label score" drawn on it."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 200))
    for detection in detections:
        colour = _COLOURS.get(detection.label, _DEVICE_COLOUR)
        x1, y1, x2, y2 = detection.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = detection.describe()
        left, top, right, bottom = draw.textbbox((x1, y1), label)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text((x1, y1), label, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()
