"""The review page in a real Chromium, on an interview that really happened (issue 14).

A candidate joins over WebRTC with real speech; a second person comes into
view half a minute in. Then a reviewer opens the interview's review link:
the video plays, the transcript follows playback, a flag seeks the video to
within 1 s of the second person's onset (read off the recording itself) and
shows its evidence, a dismissal survives a reload, and the page works at
320 px. Runs in its own network namespace, like `tests/test_browser.py`;
screenshots go to `artifacts/review/`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import REPO, SHARED
from tests.test_browser import _failures, _missing, run_driver

ARTIFACTS = REPO / "artifacts" / "review"
PHOTOS = SHARED / "testdata" / "photos"
ONE_PERSON = PHOTOS / "coco_000000000436_1person_eating_closeup.jpg"
TWO_PERSONS = PHOTOS / "coco_000000000165_2persons_indoor.jpg"
DRIVER_TIMEOUT_S = 200

CHECKS = (
    "interview_transcript", "interview_anomaly", "recording_finished", "ground_truth",
    "row_offsets", "token_out_of_address_bar", "video_plays", "transcript_follows",
    "flag_seeks", "dismissal_survives_reload", "narrow_320px", "read_only_link",
    "sessions_paged", "sessions_list",
)


@pytest.fixture(scope="module")
def review_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _missing() or (None if ONE_PERSON.is_file() else f"missing {ONE_PERSON}")
    if reason:
        pytest.skip(reason)
    return run_driver(
        "tests.browser.review_driver",
        ["--first", str(ONE_PERSON), "--second", str(TWO_PERSONS)],
        tmp_path_factory.mktemp("review"), ARTIFACTS, DRIVER_TIMEOUT_S)


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_review_page_on_a_real_interview(review_run: dict[str, Any]) -> None:
    failures = _failures(review_run, CHECKS)
    assert not failures, "\n".join(failures) + f"\n(see {ARTIFACTS})"
