"""In a real Chromium: a candidate who arrives while the server is full
waits, is told the server is busy, and gets in once a slot frees.

The run happens in its own network namespace (`unshare -n`), as
tests/test_browser.py's does; the driver is tests/browser/busy_driver.py.
Screenshots go to `artifacts/busy/`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import REPO
from tests.test_browser import PHOTO, _failures, _missing, run_driver

ARTIFACTS = REPO / "artifacts" / "busy"
DRIVER_TIMEOUT_S = 120
CHECKS = ("slot_taken", "invitation_while_full", "busy_shown", "slot_freed", "got_in")


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_a_candidate_waits_while_the_server_is_full_and_gets_in(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    results: dict[str, Any] = run_driver(
        "tests.browser.busy_driver", ["--photo", str(PHOTO)], tmp_path_factory.mktemp("busy"),
        ARTIFACTS, DRIVER_TIMEOUT_S)
    failures = _failures(results, CHECKS)
    assert not failures, "\n".join(failures)
