"""The browser end-to-end run: the server and a real Chromium, loopback only.

`tests/test_browser.py` runs this module inside a fresh network namespace:

    unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' \\
        .venv/bin/python -m tests.browser.driver --work DIR --artifacts DIR --out FILE

so every packet (HTTP, ICE, DTLS, RTP) stays on this namespace's loopback,
and the driver may take that loopback down to drop the network for real.
It writes what it checked to `--out` as JSON:
`{"checks": {name: {"ok", "detail"}}, "timings": {...}}`; the test asserts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import BrowserContext, Frame, Page, Playwright, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from testing import start_server, transcript_of, wer
from tests.checks import Checks, guarded, poll, run_checks
from tests.browser.media import fake_camera, fake_microphone
from tests.conftest import CLIP

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-default-browser-check", "--disable-dev-shm-usage",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
# The speech must reach the server as recorded: no echo cancellation,
# noise suppression or gain control in the browser.
RAW_AUDIO = """window.interviewStartOptions = {
  echoCancellation: false, noiseSuppression: false, autoGainControl: false };"""
# Every client event, timestamped, for the checks and the record.
RECORD_EVENTS = """() => {
  window.__events = [];
  for (const name of ['transcript', 'interviewer', 'state', 'anomaly', 'error', 'connection']) {
    window.__interviewClient.on(name, (m) => {
      window.__events.push({ t: Date.now(), event: name, ...m });
    });
  }
}"""
# The interviewer's audio as the page plays it: an analyser on the <audio>
# element's stream, its peak RMS kept in window.__audioPeak.
MEASURE_AUDIO = """() => {
  const audio = window.__interviewClient.audioElement;
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(audio.srcObject).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  window.__audioPeak = 0;
  setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    window.__audioPeak = Math.max(window.__audioPeak, Math.sqrt(sum / samples.length));
  }, 50);
  return ctx.resume();
}"""
# Another site embedding the candidate page.
EMBEDDER = """<!doctype html><title>Careers portal</title>
<body style="margin:0;font-family:sans-serif"><p style="margin:8px">An embedding page</p>
<iframe src="{src}" allow="camera; microphone; autoplay" title="Interview"
  style="width:320px;height:680px;border:1px solid #888"></iframe></body>"""
# The video sender's frame-rate cap, and the rate it actually sends.
SENDER_FRAMERATE = """async () => {
  const pc = window.__interviewClient.peerConnection;
  const sender = pc.getSenders().find((s) => s.track && s.track.kind === 'video');
  const stats = [...(await sender.getStats()).values()];
  const outbound = stats.find((s) => s.type === 'outbound-rtp' && s.kind === 'video');
  return {
    max: sender.getParameters().encodings.map((e) => e.maxFramerate ?? null),
    sending: outbound ? outbound.framesPerSecond ?? null : null,
  };
}"""


# -- the server -------------------------------------------------------------------


@asynccontextmanager
async def server(data_dir: Path, log_path: Path) -> AsyncIterator[str]:
    """`python server.py` on a free port, its output in `log_path`; yields the base URL."""
    env = {"DATA_DIR": str(data_dir), "ICE_LOOPBACK_ONLY": "1"}
    async with start_server(env, log_path=log_path, start_timeout_s=60, stop_timeout_s=20) as proc:
        yield proc.url


async def create_session(http: aiohttp.ClientSession, url: str, role: str) -> dict[str, str]:
    async with http.post(f"{url}/sessions", json={"job_role": role}) as resp:
        assert resp.status == 201, await resp.text()
        body: dict[str, str] = await resp.json()
        return body


async def session_row(http: aiohttp.ClientSession, url: str, session_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/sessions/{session_id}") as resp:
        assert resp.status == 200, await resp.text()
        row: dict[str, Any] = await resp.json()
        return row


@asynccontextmanager
async def embedding_site(html: str) -> AsyncIterator[str]:
    """Another origin (its own port) serving `html`; yields its URL.

    A real loopback server, not a routed response: Chromium's local network
    access checks only let a page it knows is on loopback frame a loopback page.
    """
    app = web.Application()
    app.router.add_get("/", lambda _request: _html(html))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


async def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html")


def set_loopback(state: str) -> None:
    """Take this namespace's loopback down or up: a real drop of every packet."""
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


# -- the browser -------------------------------------------------------------------


async def launch_browser(pw: Playwright, profile: Path, camera: Path, microphone: Path,
                         viewport: tuple[int, int]) -> BrowserContext:
    """Chromium with the fake camera and microphone playing these files."""
    context = await pw.chromium.launch_persistent_context(
        user_data_dir=str(profile), executable_path=CHROMIUM, headless=True,
        viewport={"width": viewport[0], "height": viewport[1]},
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}",
              f"--use-file-for-fake-audio-capture={microphone}%noloop"],
    )
    await context.add_init_script(RAW_AUDIO)
    return context


def driver_args(doc: str, timeout_s: float,
                extra: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """A driver's command line: --work, --artifacts, --out, --timeout and `extra`'s."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a fresh scratch directory")
    parser.add_argument("--artifacts", type=Path, required=True, help="screenshots and logs")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON results go")
    parser.add_argument("--timeout", type=float, default=timeout_s)
    extra(parser)
    args = parser.parse_args()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    return args


# -- the page ---------------------------------------------------------------------


async def open_interview(context: BrowserContext, join_url: str, console_log: Path) -> Page:
    page = await context.new_page()
    page.on("console", lambda m: _append(console_log, f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: _append(console_log, f"[pageerror] {e}"))
    await page.goto(join_url, wait_until="domcontentloaded")
    await page.wait_for_function("() => window.__interviewClient")
    await page.evaluate(RECORD_EVENTS)
    return page


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


async def start_by_keyboard(page: Page) -> None:
    """Start the way a keyboard user would: Tab to the button, press Enter."""
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement && document.activeElement.id") == "start":
            break
    else:
        raise AssertionError("Tab never reached the Start button")
    await page.keyboard.press("Enter")


async def connection_state(page: Page | Frame, state: str, timeout_s: float) -> None:
    await page.wait_for_function(
        "(s) => window.__interviewClient.connectionState === s", arg=state, timeout=timeout_s * 1000
    )


async def candidate_words(page: Page) -> str:
    texts: list[str] = await page.locator("#transcript li.you .words").all_inner_texts()
    return " ".join(texts)


# -- the run ------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, checks: Checks) -> None:
        self.work: Path = args.work
        self.shots: Path = args.artifacts
        self.checks = checks
        self.url = ""
        self.http: aiohttp.ClientSession
        self.context: BrowserContext

    async def shot(self, page: Page, name: str) -> None:
        await page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    async def main(self, photo: Path) -> None:
        camera = fake_camera(photo, self.work / "cam.y4m")
        microphone = fake_microphone(CLIP.with_suffix(".wav"), self.work / "mic.wav")
        self.checks.mark("media_ready")
        async with (
            server(self.work / "data", self.shots / "server.log") as self.url,
            aiohttp.ClientSession() as self.http,
            async_playwright() as pw,
        ):
            self.checks.mark("server_up")
            self.context = await launch_browser(pw, self.work / "profile", camera, microphone,
                                                (1000, 800))
            try:
                await self.interview()
                await guarded(self.checks, "tab_closed_saved", self.tab_closed())
            finally:
                await self.context.close()

    async def interview(self) -> None:
        """Session A: greeting, transcript, anomaly, a network drop, End."""
        session = await create_session(self.http, self.url, "Backend engineer")
        sid = session["session_id"]
        page = await open_interview(self.context, session["join_url"], self.shots / "console.log")
        await self.shot(page, "01-consent")
        await start_by_keyboard(page)
        if not await guarded(self.checks, "connected", self.connected(page)):
            return
        await guarded(self.checks, "greeting", self.greeting(page))
        await guarded(self.checks, "max_framerate", self.framerate(page))
        await guarded(self.checks, "transcript", self.transcript(page))
        await guarded(self.checks, "anomaly_on_page", self.anomaly(page))
        await guarded(self.checks, "rejoin", self.rejoin(page, sid))
        await guarded(self.checks, "ended", self.end(page, sid))

    async def connected(self, page: Page) -> bool:
        await connection_state(page, "connected", 30)
        self.checks.mark("connected")
        await page.evaluate(MEASURE_AUDIO)
        return self.checks.record("connected", True, "connectionState connected")

    async def greeting(self, page: Page) -> None:
        # The caption box shows the latest sentence; the conversation list keeps them all.
        said = page.locator("#transcript li.interviewer .words")
        with contextlib.suppress(PlaywrightTimeout):
            await said.filter(has_text="Serin").first.wait_for(timeout=20000)
        lines = await said.all_inner_texts()
        self.checks.mark("greeting_caption")
        self.checks.record("greeting", any("Serin" in line for line in lines),
                           f"interviewer lines on the page: {lines}")
        # The sentence starts playing when its caption arrives: give it a moment.
        peak = await poll(
            lambda: page.evaluate("window.__audioPeak > 0.01 && window.__audioPeak"), 8
        )
        self.checks.record(
            "interviewer_audio", bool(peak), f"peak RMS {peak or 0:.4f} on the <audio> stream"
        )
        await self.shot(page, "02-greeting")

    async def framerate(self, page: Page) -> None:
        async with self.http.get(f"{self.url}/config") as resp:
            expected = (await resp.json()).get("max_framerate", 10) if resp.status == 200 else 10
        got = await page.evaluate(SENDER_FRAMERATE)
        sending = got["sending"] or 0
        self.checks.record(
            "max_framerate", got["max"] == [expected] and 0 < sending <= expected + 1,
            f"video sender maxFramerate {got['max']} (/config says {expected}); "
            f"sending {sending} frames/s from a 30 fps camera",
        )

    async def transcript(self, page: Page) -> None:
        reference = transcript_of(CLIP)

        async def good_enough() -> bool:
            return wer(reference, await candidate_words(page)) <= 0.3

        ok = await poll(good_enough, 40)
        heard = await candidate_words(page)
        self.checks.mark("transcript")
        self.checks.record("transcript", ok, f"WER {wer(reference, heard):.2f}; heard {heard!r}")
        await self.shot(page, "03-transcript")

    async def anomaly(self, page: Page) -> None:
        notice = page.locator('#notices .notice[data-anomaly="multiple_persons"]')
        await notice.wait_for(state="visible", timeout=30000)
        self.checks.mark("anomaly")
        self.checks.record("anomaly_on_page", True, f"notice: {await notice.inner_text()!r}")
        await self.shot(page, "04-anomaly")

    async def rejoin(self, page: Page, sid: str) -> None:
        """Drop every packet (loopback down) until the client rebuilds, then restore."""
        set_loopback("down")
        dropped = time.monotonic()
        try:
            await connection_state(page, "reconnecting", 20)
            noticed = time.monotonic() - dropped
            await self.shot(page, "05-reconnecting")
            await asyncio.sleep(1)
        finally:
            set_loopback("up")
        restored = time.monotonic() - dropped
        self.checks.mark("rejoin_dropped")
        await connection_state(page, "connected", 35)
        rejoined = time.monotonic() - dropped
        # Still connected a little later: the server kept the rejoined peer.
        await asyncio.sleep(3)
        state = await page.evaluate("window.__interviewClient.connectionState")
        row = await session_row(self.http, self.url, sid)
        states = await page.evaluate(
            "window.__events.filter((e) => e.event === 'connection').map((e) => e.state)"
        )
        ok = state == "connected" and row["status"] == "in_progress"
        self.checks.record(
            "rejoin", ok,
            f"reconnecting after {noticed:.1f}s, network back at {restored:.1f}s, connected again "
            f"at {rejoined:.1f}s; now {state}, row {row['status']}; connection events {states}",
        )
        await self.shot(page, "06-rejoined")

    async def end(self, page: Page, sid: str) -> None:
        await page.locator("#end").focus()
        await page.keyboard.press("Enter")
        done = page.get_by_role("heading", name="Interview saved")
        await done.wait_for(state="visible", timeout=15000)
        focused = await page.evaluate("document.activeElement && document.activeElement.id")
        self.checks.record("ended", True, f"'Interview saved' shown, focus on #{focused}")
        await self.shot(page, "07-ended")
        row = await poll(lambda: self._final_row(sid), 10)
        row = row or await session_row(self.http, self.url, sid)
        info = row.get("session_information") or {}
        kinds = [a.get("type") for a in info.get("anomalies_detected", [])]
        self.checks.record("row_completed", row["status"] == "completed",
                           f"status {row['status']}, end_time {row.get('end_time')}")
        self.checks.record(
            "row_anomaly", "multiple_persons" in kinds, f"anomalies_detected types {kinds}"
        )
        history = info.get("conversation_history", [])
        said = [t["content"] for t in history if t.get("role") == "user"]
        self.checks.record("row_transcript", bool(said), f"user turns {said}")
        events = await page.evaluate("window.__events")
        (self.shots / "events-session-a.json").write_text(json.dumps(events, indent=1))
        await self.ended_link(page.url)

    async def ended_link(self, join_url: str) -> None:
        """The same link once the interview has ended: a clear refusal, no retry loop."""
        page = await open_interview(self.context, join_url, self.shots / "console.log")
        await page.get_by_role("button", name="Start").click()
        problem = page.get_by_role("alert")
        await problem.filter(has_text="ended").wait_for(timeout=15000)
        self.checks.record("ended_link_refused", True, f"alert: {await problem.inner_text()!r}")
        await self.shot(page, "09-ended-link")
        await page.close()

    async def _final_row(self, sid: str) -> dict[str, Any] | None:
        row = await session_row(self.http, self.url, sid)
        return row if row["status"] == "completed" else None

    async def tab_closed(self) -> None:
        """Session B, embedded in another page's 320 px iframe: close the tab without ending."""
        session = await create_session(self.http, self.url, "Data engineer")
        sid = session["session_id"]
        page = await self.context.new_page()
        async with embedding_site(EMBEDDER.format(src=session["join_url"])) as site:
            await page.goto(site, wait_until="domcontentloaded")
            await self._interview_in_frame(page, sid)

    async def _interview_in_frame(self, page: Page, sid: str) -> None:
        frame = await (await page.wait_for_selector("iframe")).content_frame()
        assert frame is not None
        await frame.wait_for_load_state("domcontentloaded")
        await frame.wait_for_function("() => window.__interviewClient")
        await frame.get_by_role("button", name="Start").click()
        await connection_state(frame, "connected", 30)
        await frame.locator("#transcript li.interviewer").first.wait_for()
        await self.shot(page, "08-iframe-320px")
        width = await frame.evaluate("document.documentElement.scrollWidth")
        self.checks.record("narrow_iframe", width <= 320,
                           f"connected inside a 320px iframe; page scrollWidth {width}px")
        await page.close()
        closed = time.monotonic()
        row = await poll(lambda: self._final_row(sid), 10)
        elapsed = time.monotonic() - closed
        self.checks.record("tab_closed_saved", row is not None,
                           f"status completed {elapsed:.1f}s after the tab closed" if row
                           else "not completed 10 s after the tab closed")


async def run(args: argparse.Namespace) -> None:
    await run_checks(args.out, args.timeout, lambda checks: Run(args, checks).main(args.photo))


def main() -> None:
    args = driver_args(__doc__, 150, lambda p: p.add_argument(
        "--photo", type=Path, required=True, help="the camera's picture"))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
