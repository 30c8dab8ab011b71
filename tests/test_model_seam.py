"""`make_app(config, models=...)`: tests plug their own models in at the seam."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import numpy as np

from api.keys import MEDIA
from config import Config
from engine.detector import Detection
from media.runtime import MediaModels, load_models
from testing import Candidate, PhotoTrack
from tests.conftest import MODEL_CACHE_DIR, AppFactory
from tests.test_media import live_client, new_session, stored_row


class TwoPeople:
    """A detector that sees two people in every frame, whatever it shows."""

    def __init__(self) -> None:
        self.frames = 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        self.frames += 1
        h, w = rgb.shape[:2]
        return [Detection("person", 0.9, (0.0, 0.0, w / 2, h)),
                Detection("person", 0.8, (w / 2, 0.0, w, h))]


async def test_a_detector_plugged_in_through_make_app_drives_the_real_pipeline(
    make_client: AppFactory, db, tmp_path: Path  # type: ignore[no-untyped-def]
):
    config = Config(interviewer=False, user_cache_dir=MODEL_CACHE_DIR)
    real: MediaModels = await asyncio.to_thread(load_models, config)
    fake = TwoPeople()
    client = await live_client(make_client, models=dataclasses.replace(real, detector=fake))
    sid = (await new_session(client))["session_id"]
    blank = tmp_path / "wall.png"
    from PIL import Image
    Image.new("RGB", (320, 240), (200, 190, 180)).save(blank)  # an empty wall: no person at all
    candidate = Candidate(None, PhotoTrack(blank))
    try:
        await candidate.join(client, sid)
        (anomaly,) = await candidate.wait_for("anomaly", timeout=30)
        assert anomaly["anomaly"] == "multiple_persons"
        assert client.server.app[MEDIA].live(uuid.UUID(sid)) is not None
    finally:
        await candidate.close()
    row = await stored_row(db, sid, timeout=30)
    assert fake.frames >= 2  # the seam's detector ran, in the detector executor
    assert '"multiple_persons"' in row["session_information"]
