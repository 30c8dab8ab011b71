"""How often the change gate would run the detector on the load test's camera.

    .venv/bin/python scripts/probe_video_gate.py [--media artifacts/loadtest-media]

Decodes each pre-encoded load-test video (`python -m loadtest.prepare` makes
them: real photos, panning, through VP8) to the gate's 64x48 grey thumbnails,
takes samples at 2 fps, and reports over every pair of samples (a reference
and a later sample) the changed fraction and the share of pairs over
`DETECT_CHANGE`, for a few values of the per-pixel delta.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import av
import numpy as np

import media.video_track as video_track
from config import DEFAULT_DETECT_CHANGE
from loadtest.prepare import DEFAULT_CACHE, VIDEO_FPS


def thumbnails(path: Path) -> list[np.ndarray]:
    width, height = video_track.THUMB_SIZE
    with av.open(str(path)) as container:
        return [frame.reformat(width=width, height=height, format="gray",
                               interpolation="AREA").to_ndarray()
                for frame in container.decode(video=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--deltas", default="12,16,20", help="per-pixel deltas to try")
    args = parser.parse_args()
    for path in sorted((args.media / "video").glob("*.webm")):
        samples = thumbnails(path)[:: VIDEO_FPS // 2]
        pairs = list(itertools.combinations(samples, 2))
        for delta in map(int, args.deltas.split(",")):
            video_track.PIXEL_DELTA = delta
            fractions = np.array([video_track.changed_fraction(a, b) for a, b in pairs])
            print(f"{path.stem:12s} delta {delta:2d}: changed mean {fractions.mean():.4f}, "
                  f"p90 {np.percentile(fractions, 90):.4f}; "
                  f"pairs over {DEFAULT_DETECT_CHANGE}: {np.mean(fractions > DEFAULT_DETECT_CHANGE):.2f}")


if __name__ == "__main__":
    main()
