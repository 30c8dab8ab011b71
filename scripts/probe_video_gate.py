"""How often the change gate would run the detector on the load test's camera.

    .venv/bin/python scripts/probe_video_gate.py [--media artifacts/loadtest-media]

Decodes each pre-encoded load-test video (`python -m loadtest.prepare` makes
them: real photos, panning, through VP8) to the gate's 64x48 grey thumbnails,
takes samples at 2 fps, and reports over every pair of samples (a reference
and a later sample) the changed fraction and the share of pairs over
`DETECT_CHANGE`, for a few values of the per-pixel delta and of the slack
allowed beside strong edges (`EDGE_SLACK`). Then the other side of the
trade: a 40x60 px phone (dark or light) placed at 25 spots of each still real
photo, and how many of those 200 placements the gate would not notice at once
(they wait for the floor run).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import av
import numpy as np
from PIL import Image

import media.video_track as video_track
from config import DEFAULT_DETECT_CHANGE
from loadtest.prepare import DEFAULT_CACHE, PHOTOS_DIR, VIDEO_FPS

PLACED_ON = ("coco_000000000436_1person_eating_closeup.jpg",
             "coco_000000168974_1person_child_holding_phone.jpg",
             "coco_000000000165_2persons_indoor.jpg",
             "coco_000000516008_laptop_desk_noperson.jpg")


def thumbnails(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [video_track.thumbnail(frame) for frame in container.decode(video=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--deltas", default="12,16,20", help="per-pixel deltas to try")
    parser.add_argument("--slacks", default="0,0.2", help="edge slacks to try")
    args = parser.parse_args()
    for path in sorted((args.media / "video").glob("*.webm")):
        samples = thumbnails(path)[:: VIDEO_FPS // 2]
        pairs = list(itertools.combinations(samples, 2))
        for delta, slack in itertools.product(map(int, args.deltas.split(",")),
                                              map(float, args.slacks.split(","))):
            video_track.PIXEL_DELTA, video_track.EDGE_SLACK = delta, slack
            fractions = np.array([video_track.changed_fraction(a, b) for a, b in pairs])
            print(f"{path.stem:12s} delta {delta:2d} slack {slack:.2f}: "
                  f"changed mean {fractions.mean():.4f}, "
                  f"p90 {np.percentile(fractions, 90):.4f}; "
                  f"pairs over {DEFAULT_DETECT_CHANGE}: {np.mean(fractions > DEFAULT_DETECT_CHANGE):.2f}")
    if not all((PHOTOS_DIR / name).is_file() for name in PLACED_ON):
        print(f"placed phones: skipped, the photos are not in {PHOTOS_DIR}")
        return
    for delta, slack in itertools.product(map(int, args.deltas.split(",")),
                                          map(float, args.slacks.split(","))):
        video_track.PIXEL_DELTA, video_track.EDGE_SLACK = delta, slack
        print(f"placed phones, delta {delta:2d} slack {slack:.2f}: "
              f"{missed_placements(PHOTOS_DIR)} of 200 under the gate")


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """An RGB picture's thumbnail, through YUV as a decoded camera frame is."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    return video_track.thumbnail(frame)


def missed_placements(photos_dir: Path) -> int:
    """Of 200 phones placed on still photos, how many stay under the gate."""
    missed = 0
    for name in PLACED_ON:
        image = Image.open(photos_dir / name).convert("RGB")
        image.thumbnail((640, 480))
        canvas = Image.new("RGB", (640, 480))
        canvas.paste(image, ((640 - image.width) // 2, (480 - image.height) // 2))
        scene = np.asarray(canvas)
        still = thumbnail(scene)
        for y, x, grey in itertools.product((40, 120, 200, 300, 400), (40, 160, 300, 440, 560),
                                            (25, 200)):
            placed = scene.copy()
            placed[y:y + 60, x:x + 40] = grey
            missed += video_track.changed_fraction(still, thumbnail(placed)) < DEFAULT_DETECT_CHANGE
    return missed


if __name__ == "__main__":
    main()
