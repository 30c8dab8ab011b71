"""End to end in a real Chromium: the candidate page, the server, a real network path.

The run happens in its own network namespace (`unshare -n`), so the server,
Chromium and every WebRTC packet stay on a private loopback, which the driver
(`tests/browser/driver.py`) also takes down to drop the connection for real.
Chromium's fake camera shows a photo of two people; its fake microphone plays
a recorded LibriVox sentence. Screenshots and logs go to `artifacts/browser/`.

Needs root, util-linux `unshare`, iproute2 `ip`, `apt-get install -y chromium
ffmpeg` and `pip install playwright` (never `playwright install`: the Debian
Chromium at /usr/bin/chromium is used).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SHARED

ARTIFACTS = REPO / "artifacts" / "browser"
PHOTO = SHARED / "testdata" / "photos" / "coco_000000000165_2persons_indoor.jpg"
CHROMIUM = Path("/usr/bin/chromium")
DRIVER_TIMEOUT_S = 150

INTERVIEW_CHECKS = (
    "connected", "interviewer_audio", "max_framerate", "transcript", "anomaly_on_page",
    "ended", "row_completed", "row_anomaly", "row_transcript", "ended_link_refused",
    "narrow_iframe", "tab_closed_saved",
)


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: the test runs in its own network namespace (unshare -n)"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("ffmpeg", "ffmpeg")):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install -y {package}"
    if not CHROMIUM.exists():
        return "no /usr/bin/chromium: apt-get update && apt-get install -y chromium ffmpeg"
    if importlib.util.find_spec("playwright") is None:
        return "no Python Playwright: .venv/bin/pip install playwright (not `playwright install`)"
    if not PHOTO.is_file():
        return f"shared test photo missing: {PHOTO}"
    probe = subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the driver once in a fresh network namespace; its results as a dict."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    return run_driver("tests.browser.driver", ["--photo", str(PHOTO)],
                      tmp_path_factory.mktemp("browser"), ARTIFACTS, DRIVER_TIMEOUT_S)


def run_driver(module: str, extra: list[str], work: Path, artifacts: Path,
               timeout_s: float) -> dict[str, Any]:
    """Run a driver module in a fresh network namespace; its results as a dict."""
    out = work / "results.json"
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*"):
        old.unlink()
    command = [
        "unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
        sys.executable, "-m", module,
        "--work", str(work), "--artifacts", str(artifacts), "--out", str(out),
        *extra, "--timeout", str(timeout_s - 15),
    ]
    proc = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )
    output = proc.stdout + proc.stderr
    (artifacts / "driver.log").write_text(output)
    if not out.exists():
        pytest.fail(f"the driver wrote no results (exit {proc.returncode}):\n{output}")
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def _failures(results: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    checks = results["checks"]
    missing = [f"{name}: never reached" for name in names if name not in checks]
    failed = [f"{name}: {checks[name]['detail']}" for name in names
              if name in checks and not checks[name]["ok"]]
    crashed = [f"run: {checks['run']['detail']}"] if "run" in checks else []
    return crashed + failed + missing


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_candidate_page_end_to_end(browser_run: dict[str, Any]) -> None:
    """Greeting heard and captioned, speech transcribed, two people flagged, rows saved."""
    failures = _failures(browser_run, INTERVIEW_CHECKS)
    assert not failures, "\n".join(failures) + f"\n(see {ARTIFACTS})"


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_greeting_is_captioned(browser_run: dict[str, Any]) -> None:
    """The interviewer's first sentence ("Hello, I'm Serin, ...") reaches the page.

    It is spoken the moment the connection is up, a few milliseconds before
    the server sees the `events` data channel open: the server must hold its
    first events until the channel is open.
    """
    failures = _failures(browser_run, ("greeting",))
    assert not failures, "\n".join(failures) + f"\n(see {ARTIFACTS})"


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_network_drop_rejoins_the_same_session(browser_run: dict[str, Any]) -> None:
    """Loopback down, then up: the client rebuilds its peer and the session goes on.

    Needs the server's rejoin (a new offer for a session whose connection
    dropped, within REJOIN_GRACE_S, continues it).
    """
    failures = _failures(browser_run, ("rejoin",))
    assert not failures, "\n".join(failures) + f"\n(see {ARTIFACTS})"
