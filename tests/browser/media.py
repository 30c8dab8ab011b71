"""The fake camera and microphone Chromium plays: a real photo, real speech."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["LEAD_SILENCE_S", "fake_camera", "fake_microphone"]

# Chromium starts the file when the page opens the microphone. The
# connection is up about a second later, and the interviewer's greeting and
# first question take about 16 s more: the candidate answers after them
# (speaking over them would be a barge-in, which the test tolerates too).
LEAD_SILENCE_S = 19.0
TRAIL_SILENCE_S = 3.0


def fake_camera(photo: Path, out: Path) -> Path:
    """A 640x480 y4m of `photo` (letterboxed); Chromium loops it as the camera."""
    scale = "scale=640:480:force_original_aspect_ratio=decrease,pad=640:480:(ow-iw)/2:(oh-ih)/2"
    _ffmpeg("-loop", "1", "-i", str(photo), "-t", "2", "-vf", f"{scale},format=yuv420p",
            "-r", "30", "-f", "yuv4mpegpipe", str(out))
    return out


def fake_microphone(speech: Path, out: Path) -> Path:
    """`speech` at 48 kHz mono 16-bit, with silence before and after."""
    pad = f"adelay={int(LEAD_SILENCE_S * 1000)},apad=pad_dur={TRAIL_SILENCE_S}"
    _ffmpeg("-i", str(speech), "-af", pad, "-ar", "48000", "-ac", "1", "-c:a", "pcm_s16le",
            str(out))
    return out


def _ffmpeg(*args: str) -> None:
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args]
    subprocess.run(command, check=True, timeout=60)
