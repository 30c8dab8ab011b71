"""The review page end to end: an interview that really happened, then its review.

`tests/test_review_page.py` runs this module inside a fresh network namespace
(like `tests/browser/driver.py`):

    unshare -n sh -c 'ip link set lo up && exec "$0" "$@"' \\
        .venv/bin/python -m tests.browser.review_driver --work DIR --artifacts DIR --out FILE

A candidate joins in Chromium: one person in view, then a second one (the
fake camera switches from one COCO photo to another at `SWITCH_S`), real
speech on the microphone. After the interview ends, the review page is
opened with a deciding review link: the video plays, the transcript follows
it, a flag seeks the video to its onset, a dismissal survives a reload, and
the page works at 320 px. The onset the flag must seek to is found in the
recording itself (the first recorded frame that shows the second photo), so
the check holds the server's clock against the picture, not against itself.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from PIL import Image, ImageOps
from playwright.async_api import BrowserContext, Page, async_playwright

from testing import start_server, transcript_of, wer
from tests.browser.driver import (
    Checks, candidate_words, connection_state, driver_args, guarded, launch_browser,
    open_interview, poll, run_checks, start_by_keyboard,
)
from tests.browser.media import fake_microphone
from tests.conftest import CLIP

API_KEY = "review-test-key"
KEY = {"Authorization": f"Bearer {API_KEY}"}
SWITCH_S = 30.0  # camera seconds of one person before the second one is in view
CAMERA_S = 60.0
CAMERA_FPS = 5
SIZE = (640, 480)
REVIEWER = "Dana (proctor)"


def letterboxed(photo: Path) -> Image.Image:
    return ImageOps.pad(Image.open(photo).convert("RGB"), SIZE, color=(0, 0, 0))


def two_phase_camera(first: Path, second: Path, out: Path) -> Path:
    """A y4m: `first` for SWITCH_S seconds, then `second` (Chromium loops the file)."""
    frames = [letterboxed(first), letterboxed(second)]
    w, h = SIZE
    planes = []
    for image in frames:
        y, u, v = image.convert("YCbCr").split()
        planes.append(y.tobytes() + u.resize((w // 2, h // 2)).tobytes()
                      + v.resize((w // 2, h // 2)).tobytes())
    with out.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{CAMERA_FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(int(CAMERA_S * CAMERA_FPS)):
            f.write(b"FRAME\n")
            f.write(planes[0 if i < SWITCH_S * CAMERA_FPS else 1])
    return out


def thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((32, 24)), dtype=np.float32)


def onset_in_recording(recording: Path, first: Path, second: Path) -> float | None:
    """The time of the first recorded frame closer to `second` than to `first`."""
    refs = thumb(letterboxed(first)), thumb(letterboxed(second))
    with av.open(str(recording)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            picture = thumb(frame.to_image().resize(SIZE))
            d1, d2 = (float(np.abs(picture - ref).mean()) for ref in refs)
            if d2 < d1 and frame.pts is not None and frame.time_base is not None:
                return float(frame.pts * frame.time_base)
    return None


class ReviewRun:
    def __init__(self, args: argparse.Namespace, checks: Checks) -> None:
        self.work: Path = args.work
        self.shots: Path = args.artifacts
        self.first: Path = args.first
        self.second: Path = args.second
        self.checks = checks
        self.url = ""
        self.http: aiohttp.ClientSession
        self.context: BrowserContext
        self.console = self.shots / "review-console.log"

    async def shot(self, page: Page, name: str) -> None:
        await page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    async def main(self) -> None:
        camera = two_phase_camera(self.first, self.second, self.work / "cam.y4m")
        microphone = fake_microphone(CLIP.with_suffix(".wav"), self.work / "mic.wav")
        env = {"DATA_DIR": str(self.work / "data"), "ICE_LOOPBACK_ONLY": "1", "API_KEY": API_KEY}
        async with (
            start_server(env, log_path=self.shots / "review-server.log", start_timeout_s=60,
                         stop_timeout_s=20) as proc,
            aiohttp.ClientSession() as self.http,
            async_playwright() as pw,
        ):
            self.url = proc.url
            self.context = await launch_browser(pw, self.work / "profile", camera, microphone,
                                                (1100, 900))
            try:
                created = await self.interview()
                if created is not None:
                    await self.review(created)
            finally:
                await self.context.close()

    # -- the interview -------------------------------------------------------------

    async def interview(self) -> dict[str, Any] | None:
        async with self.http.post(f"{self.url}/sessions", json={"job_role": "Site engineer"},
                                  headers=KEY) as resp:
            assert resp.status == 201, await resp.text()
            created: dict[str, Any] = await resp.json()
        page = await open_interview(self.context, created["join_url"], self.console)
        await start_by_keyboard(page)
        await connection_state(page, "connected", 30)
        reference = transcript_of(CLIP)
        heard = await poll(lambda: self._heard(page, reference), 45)
        self.checks.record("interview_transcript", bool(heard),
                           f"candidate words on the page: {await candidate_words(page)!r}")
        notice = page.locator('#notices .notice[data-anomaly="multiple_persons"]')
        await notice.wait_for(state="visible", timeout=45000)
        self.checks.record("interview_anomaly", True, "multiple_persons noticed on the page")
        await self.shot(page, "20-interview")
        await page.locator("#end").click()
        await page.get_by_role("heading", name="Interview saved").wait_for(timeout=15000)
        await page.close()
        sid = created["session_id"]
        ready = await poll(lambda: self._finished(sid), 30, every_s=0.5)
        self.checks.record("recording_finished", bool(ready),
                           "row completed and recording finished" if ready else "not in 30 s")
        return created if ready else None

    async def _heard(self, page: Page, reference: str) -> bool:
        return wer(reference, await candidate_words(page)) <= 0.4

    async def _finished(self, sid: str) -> bool:
        async with self.http.get(f"{self.url}/sessions/{sid}/review", headers=KEY) as resp:
            body = await resp.json()
            return bool(resp.status == 200 and body["status"] == "completed"
                        and body["recording_ready"] and body["report"] is not None)

    # -- the review ------------------------------------------------------------------

    async def review(self, created: dict[str, Any]) -> None:
        sid = created["session_id"]
        async with self.http.post(f"{self.url}/sessions/{sid}/review-tokens", headers=KEY,
                                  json={"scope": "decide", "reviewer": REVIEWER}) as resp:
            assert resp.status == 201, await resp.text()
            minted = await resp.json()
        truth = await self.ground_truth(sid, minted["token"])
        await guarded(self.checks, "row_offsets", self.row_offsets(sid, truth))
        page = await self.context.new_page()
        page.on("console", lambda m: _append(self.console, f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: _append(self.console, f"[pageerror] {e}"))
        await page.goto(minted["review_url"], wait_until="domcontentloaded")
        await page.wait_for_function("() => window.__review && window.__review.data")
        token_gone = "token=" not in page.url
        self.checks.record("token_out_of_address_bar", token_gone, f"address: {page.url}")
        await self.shot(page, "21-review-loaded")
        if not await guarded(self.checks, "video_plays", self.plays(page)):
            return
        await guarded(self.checks, "transcript_follows", self.follows(page))
        await guarded(self.checks, "flag_seeks", self.flag_seeks(page, truth))
        await guarded(self.checks, "dismissal_survives_reload", self.dismiss(page, sid))
        await page.close()
        await guarded(self.checks, "narrow_320px", self.narrow(minted["review_url"]))
        await guarded(self.checks, "read_only_link", self.read_only(created["review_url"]))
        await guarded(self.checks, "sessions_list", self.sessions_list(sid))

    async def ground_truth(self, sid: str, token: str) -> float | None:
        """The second person's onset, read off the recording (fetched with the review token)."""
        path = self.work / "recording.webm"
        async with self.http.get(f"{self.url}/sessions/{sid}/recording",
                                 params={"token": token}) as resp:
            assert resp.status == 200, await resp.text()
            path.write_bytes(await resp.read())
        onset = await asyncio.to_thread(onset_in_recording, path, self.first, self.second)
        self.checks.record("ground_truth", onset is not None,
                           f"second person first recorded at {onset}s")
        return onset

    async def row_offsets(self, sid: str, truth: float | None) -> None:
        async with self.http.get(f"{self.url}/sessions/{sid}", headers=KEY) as resp:
            row = await resp.json()
        info = row["session_information"]
        lines = info["conversation_history"]
        offsets = [line.get("offset_s") for line in lines]
        anomalies = [(a["type"], a.get("offset_s")) for a in info["anomalies_detected"]]
        persons = [at for kind, at in anomalies if kind == "multiple_persons"]
        ordered = all(o is not None for o in offsets) and offsets == sorted(offsets)
        near = truth is not None and bool(persons) and abs(persons[0] - truth) <= 1.0
        self.checks.record(
            "row_offsets", ordered and near,
            f"line offsets {offsets}; anomalies {anomalies}; recorded onset {truth}")

    async def plays(self, page: Page) -> bool:
        await page.wait_for_function("() => document.getElementById('video').readyState >= 1",
                                     timeout=15000)
        duration = await page.evaluate("document.getElementById('video').duration")
        await page.evaluate("document.getElementById('video').play()")
        moved = await poll(lambda: page.evaluate(
            "document.getElementById('video').currentTime > 1.5"), 10)
        now = await page.evaluate("document.getElementById('video').currentTime")
        await self.shot(page, "22-playing")
        return self.checks.record("video_plays", bool(moved) and duration > 10,
                                  f"duration {duration:.1f}s; playing, at {now:.2f}s")

    async def follows(self, page: Page) -> None:
        """Select the candidate's line: the video seeks there and that line is the current one."""
        lines = await page.evaluate("window.__review.data.transcript")
        index = next(i for i, line in enumerate(lines) if line["role"] == "user")
        button = page.locator(f'#lines li[data-index="{index}"] button')
        await button.focus()
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "(i) => document.querySelector('#lines li.current')?.dataset.index === String(i)",
            arg=index, timeout=5000)
        at = await page.evaluate("document.getElementById('video').currentTime")
        # Keep playing: the highlight moves on to a later line when the video gets there.
        later = next((i for i in range(index + 1, len(lines))
                      if lines[i]["offset_s"] is not None), None)
        moved_on = True
        if later is not None:
            await page.evaluate(
                "(t) => { const v = document.getElementById('video'); v.currentTime = t; "
                "v.play(); }", lines[later]["offset_s"] - 0.5)
            moved_on = await poll(lambda: page.evaluate(
                "(i) => document.querySelector('#lines li.current')?.dataset.index === String(i)",
                later), 6)
        await self.shot(page, "23-transcript-follows")
        self.checks.record(
            "transcript_follows", abs(at - lines[index]["offset_s"]) < 0.6 and bool(moved_on),
            f"line {index} at {lines[index]['offset_s']}s: video at {at:.2f}s, highlighted; "
            f"line {later} highlighted as playback reached it: {moved_on}")

    async def flag_seeks(self, page: Page, truth: float | None) -> None:
        flags = await page.evaluate("window.__review.data.flags")
        index = next(f["flag"] for f in flags if f["type"] == "multiple_persons")
        mark = page.locator(f'#timebar .mark[data-flag="{index}"]')
        # The mark sits where its moment is on the bar.
        placed = await page.evaluate(
            "(i) => { const bar = document.getElementById('timebar').getBoundingClientRect();"
            " const m = document.querySelector(`#timebar .mark[data-flag=\"${i}\"]`)"
            ".getBoundingClientRect();"
            " return (m.left + m.width / 2 - bar.left) / bar.width; }", index)
        duration = await page.evaluate("document.getElementById('video').duration")
        expected = flags[index]["offset_s"] / duration
        await mark.focus()
        await page.keyboard.press("Enter")
        await page.locator("#evidence").wait_for(state="visible")
        await page.wait_for_function(
            "() => { const i = document.getElementById('evidence-img'); "
            "return i.complete && i.naturalWidth > 0; }", timeout=10000)
        at = await page.evaluate("document.getElementById('video').currentTime")
        await asyncio.sleep(0.5)  # the seeked frame painted
        await self.shot(page, "24-flag-evidence")
        ok = truth is not None and abs(at - truth) <= 1.0 and abs(placed - expected) < 0.03
        self.checks.record("flag_seeks", ok,
                           f"flag {index}: mark at {placed:.3f} of the bar (its moment: "
                           f"{expected:.3f}); video at {at:.2f}s; recorded onset {truth}s; "
                           "evidence picture shown")

    async def dismiss(self, page: Page, sid: str) -> None:
        await page.locator("#flag-note").fill("a colleague walked past; not a helper")
        await page.locator("#dismiss").click()
        badge = page.locator("#flags li.flag.dismissed .badge")
        await badge.first.wait_for(timeout=10000)
        await page.reload(wait_until="domcontentloaded")
        await page.wait_for_function("() => window.__review && window.__review.data")
        flags = await page.evaluate("window.__review.data.flags")
        after = [f["decision"] and f["decision"]["decision"] for f in flags]
        await page.locator("#flags .flag-button").first.click()
        await self.shot(page, "25-dismissed-after-reload")
        async with self.http.get(f"{self.url}/sessions/{sid}/review", headers=KEY) as resp:
            stored = (await resp.json())["review"]["history"]
        by = [h["decided_by"] for h in stored]
        self.checks.record("dismissal_survives_reload", "dismissed" in after and REVIEWER in by,
                           f"after reload: {after}; audit {by}")

    async def narrow(self, review_url: str) -> None:
        page = await self.context.new_page()
        await page.set_viewport_size({"width": 320, "height": 800})
        await page.goto(review_url, wait_until="domcontentloaded")
        await page.wait_for_function("() => window.__review && window.__review.data")
        await page.locator("#flags .flag-button").first.focus()
        await page.keyboard.press("Enter")
        await asyncio.sleep(0.5)
        width = await page.evaluate("document.documentElement.scrollWidth")
        await self.shot(page, "26-review-320px")
        await page.close()
        self.checks.record("narrow_320px", width <= 320, f"scrollWidth {width}px at 320px")

    async def read_only(self, review_url: str) -> None:
        page = await self.context.new_page()
        await page.goto(review_url, wait_until="domcontentloaded")
        await page.wait_for_function("() => window.__review && window.__review.data")
        await page.locator("#flags .flag-button").first.click()
        disabled = await page.evaluate(
            "['dismiss', 'confirm', 'save-review'].map((id) => document.getElementById(id).disabled)")
        await self.shot(page, "27-read-only-link")
        await page.close()
        self.checks.record("read_only_link", all(disabled),
                           f"decision buttons disabled on the read-only link: {disabled}")

    async def sessions_list(self, sid: str) -> None:
        # 50 newer invitations: the interview is on the list's second page.
        for _ in range(50):
            async with self.http.post(f"{self.url}/sessions", json={"job_role": "Invited"},
                                      headers=KEY) as resp:
                assert resp.status == 201, await resp.text()
        page = await self.context.new_page()
        await page.goto(f"{self.url}/review", wait_until="domcontentloaded")
        await page.locator("#api-key").fill(API_KEY)
        await page.keyboard.press("Enter")
        await page.locator("#more").wait_for(state="visible", timeout=10000)
        first_page = await page.locator("#sessions li").count()
        await page.locator("#more").scroll_into_view_if_needed()
        await page.screenshot(path=str(self.shots / "28-sessions-more.png"))  # the viewport
        await page.locator("#more").dblclick()  # a double click adds one page, not two
        item = page.locator(f'#sessions li[data-session="{sid}"]')
        await item.wait_for(timeout=10000)
        text = await item.inner_text()
        shown = await page.locator("#sessions li").count()
        more_hidden = await page.locator("#more").is_hidden()
        await item.scroll_into_view_if_needed()
        await self.shot(page, "29-sessions-list")
        self.checks.record("sessions_paged", first_page == 50 and shown == 51 and more_hidden,
                           f"first page {first_page}, after More {shown}, More hidden after: "
                           f"{more_hidden}")
        await item.locator("a").click()
        await page.wait_for_function("() => window.__review && window.__review.data",
                                     timeout=10000)
        can_decide = await page.evaluate("window.__review.data.you.can_decide")
        await page.close()
        self.checks.record("sessions_list", "0 open flags" in text and bool(can_decide),
                           f"list entry {text!r}; its review page can decide: {can_decide}")


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


async def run(args: argparse.Namespace) -> None:
    await run_checks(args.out, args.timeout, lambda checks: ReviewRun(args, checks).main())


def _photos(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--first", type=Path, required=True, help="the camera's first photo")
    parser.add_argument("--second", type=Path, required=True, help="then this one")


def main() -> None:
    args = driver_args(__doc__, 170, _photos)
    started = time.monotonic()
    asyncio.run(run(args))
    print(f"review run took {time.monotonic() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
