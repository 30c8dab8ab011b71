"""A full server, a real Chromium waiting for a slot, then getting in.

`tests/test_busy_page.py` runs this module in its own network namespace, as
tests/browser/driver.py is run. The server admits one interview
(`MAX_SESSIONS=1`); a real aiortc candidate holds that slot; the browser
opens a second session's join link and starts. The server answers its offer
503 with `Retry-After`, so client.js waits and the page says the server is
busy; once the first interview ends, the browser's next try gets in.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import aiohttp
from playwright.async_api import BrowserContext, Page, async_playwright

from media.ice import use_loopback_only
from testing import Candidate, SpeechTrack, start_server
from tests.browser.driver import (
    connection_state, create_session, driver_args, launch_browser, open_interview,
    start_by_keyboard,
)
from tests.browser.media import fake_camera, fake_microphone
from tests.checks import Checks, guarded, poll, run_checks
from tests.conftest import CLIP


class Run:
    def __init__(self, args: argparse.Namespace, checks: Checks) -> None:
        self.work: Path = args.work
        self.shots: Path = args.artifacts
        self.photo: Path = args.photo
        self.checks = checks
        self.url = ""
        self.http: aiohttp.ClientSession
        self.context: BrowserContext

    async def main(self) -> None:
        use_loopback_only()  # the aiortc candidate too
        camera = fake_camera(self.photo, self.work / "cam.y4m")
        microphone = fake_microphone(CLIP.with_suffix(".wav"), self.work / "mic.wav")
        env = {"DATA_DIR": str(self.work / "data"), "ICE_LOOPBACK_ONLY": "1",
               "MAX_SESSIONS": "1", "INTERVIEWER": "0", "RECORDING": "0"}
        async with (
            start_server(env, log_path=self.shots / "busy-server.log", start_timeout_s=60,
                         stop_timeout_s=20) as proc,
            aiohttp.ClientSession(base_url=proc.url) as self.http,
            async_playwright() as pw,
        ):
            self.url = proc.url
            self.context = await launch_browser(pw, self.work / "profile", camera, microphone,
                                                (1000, 800))
            try:
                await self.wait_for_a_slot()
            finally:
                await self.context.close()

    async def wait_for_a_slot(self) -> None:
        first = await create_session(self.http, self.url, "Holds the slot")
        holder = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
        await holder.join(self.http, first["session_id"])
        self.checks.record("slot_taken", True, f"session {first['session_id']} is live")
        try:
            second = await create_session(self.http, self.url, "Waits for it")
            self.checks.record("invitation_while_full", True,
                               "POST /sessions still succeeds at capacity")
            page = await open_interview(self.context, second["join_url"],
                                        self.shots / "busy-console.log")
            await start_by_keyboard(page)
            if not await guarded(self.checks, "busy_shown", self.busy(page)):
                return
            freed = time.monotonic()
            async with self.http.post(f"/sessions/{first['session_id']}/end") as resp:
                ended = resp.status == 200
        finally:
            await holder.close()
        self.checks.record("slot_freed", ended, "the first interview ended through the API")
        await guarded(self.checks, "got_in", self.got_in(page, freed))

    async def busy(self, page: Page) -> bool:
        await connection_state(page, "busy", 20)
        status = page.locator("#connection")
        text = await poll(lambda: _busy_text(page), 5)
        await page.screenshot(path=str(self.shots / "40-busy.png"), full_page=True)
        refused = await page.evaluate(
            "() => (window.__events || []).filter((e) => e.event === 'connection').map((e) => e.state)")
        return self.checks.record(
            "busy_shown", bool(text) and "busy" in refused,
            f"status {await status.inner_text()!r}; connection states {refused}")

    async def got_in(self, page: Page, freed: float) -> None:
        await connection_state(page, "connected", 30)
        took = time.monotonic() - freed
        await page.wait_for_function(  # the self view shows the camera
            "() => document.querySelector('video') && document.querySelector('video').videoWidth > 0",
            timeout=10000)
        await asyncio.sleep(0.5)
        await page.screenshot(path=str(self.shots / "41-got-in.png"), full_page=True)
        self.checks.record("got_in", True, f"connected {took:.1f} s after the slot was freed")


async def _busy_text(page: Page) -> str | None:
    text = await page.locator("#connection").inner_text()
    return text if "busy" in text else None


async def run(args: argparse.Namespace) -> None:
    await run_checks(args.out, args.timeout, lambda checks: Run(args, checks).main())


def main() -> None:
    args = driver_args(__doc__, 120, lambda p: p.add_argument(
        "--photo", type=Path, required=True, help="the camera's picture"))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
