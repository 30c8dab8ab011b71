"""Security headers on every answer; interview files named and private;
the candidate page runs under its CSP and hides the token (issue 11)."""

from __future__ import annotations

import io
import re
import shutil
import stat
import subprocess
import uuid

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from api.headers import PAGE_CSP
from api.keys import LAYOUT
from tests.conftest import REPO
from tests.pdfs import text_pdf


async def test_every_answer_says_nosniff(client: TestClient):
    for method, path in (("GET", "/"), ("GET", "/static/client.js"), ("GET", "/healthz"),
                         ("GET", "/config"), ("GET", "/nope"), ("PUT", "/sessions"),
                         ("POST", "/sessions"), ("GET", f"/sessions/{uuid.uuid4()}")):
        resp = await client.request(method, path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", (method, path)
        assert "Content-Security-Policy" in resp.headers, (method, path)


async def test_the_page_and_static_files_have_the_page_csp(client: TestClient):
    for path in ("/", "/static/client.js", "/static/page.js", "/static/style.css"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.headers["Content-Security-Policy"] == PAGE_CSP
    assert "script-src 'self'" in PAGE_CSP and "unsafe-inline" not in PAGE_CSP
    api = await client.get("/healthz")
    assert api.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_the_page_has_no_inline_script():
    html = (REPO / "static" / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts, "the page loads its script"
    for attributes, body in scripts:
        assert 'src="/static/' in attributes and not body.strip()
    assert not re.search(r"\son[a-z]+\s*=", html), "no inline event handlers"
    assert "style=" not in html


async def test_interview_files_are_named_attachments_and_private(client: TestClient):
    form = aiohttp.FormData()
    form.add_field("job_role", "QA")
    form.add_field("resume", io.BytesIO(text_pdf("Jane")), filename="cv.pdf",
                   content_type="application/pdf")
    sid = (await (await client.post("/sessions", data=form)).json())["session_id"]
    resp = await client.get(f"/sessions/{sid}/resume")
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{sid}-resume.pdf"'
    assert resp.headers["Cache-Control"] == "private, no-store"
    layout = client.server.app[LAYOUT]
    path = layout.resume(uuid.UUID(sid))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Recordings and evidence, as the media side leaves them.
    recording = layout.recording(uuid.UUID(sid))
    recording.parent.mkdir(parents=True, exist_ok=True)
    recording.write_bytes(b"\x1aE\xdf\xa3webm")
    evidence = layout.evidence(uuid.UUID(sid), "a1.jpg")
    evidence.parent.mkdir(parents=True, exist_ok=True)
    evidence.write_bytes(b"\xff\xd8\xff\xe0jpeg")
    resp = await client.get(f"/sessions/{sid}/recording")
    assert resp.headers["Content-Disposition"] == f'inline; filename="{sid}.webm"'
    resp = await client.get(f"/sessions/{sid}/evidence/a1.jpg")
    assert resp.headers["Content-Disposition"] == f'inline; filename="{sid}-a1.jpg"'
    assert resp.headers["Content-Type"] == "image/jpeg"


PAGE_HARNESS = r"""
const store = new Map();
const calls = [];
globalThis.sessionStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
globalThis.location = { search: process.argv[2], pathname: '/', hash: '' };
globalThis.history = { state: null, replaceState: (_s, _t, url) => { calls.push(url); } };
globalThis.window = {};
const element = () => ({ addEventListener() {}, dataset: {}, hidden: false, focus() {} });
globalThis.document = { getElementById: element, addEventListener() {}, createElement: element };
const source = (await import('node:fs')).readFileSync(process.argv[3], 'utf8')
  .replace(/^import .*client\.js';$/m,
           'class InterviewClient { constructor(o) { globalThis.made = o; } on() { return this; } }');
await import('data:text/javascript,' + encodeURIComponent(source));
console.log(JSON.stringify({ calls, made: globalThis.made, stored: [...store] }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page script")
def test_the_page_moves_the_token_out_of_the_address_bar(tmp_path):
    harness = tmp_path / "harness.mjs"
    harness.write_text(PAGE_HARNESS)
    sid = str(uuid.uuid4())
    out = subprocess.run(
        ["node", str(harness), f"?session={sid}&token=t0k3n", str(REPO / "static" / "page.js")],
        capture_output=True, text=True, timeout=30, check=True,
    )
    result = __import__("json").loads(out.stdout)
    assert result["calls"] == [f"/?session={sid}"]
    assert result["made"] == {"serverUrl": "", "sessionId": sid, "token": "t0k3n"}
    assert result["stored"] == [[f"interview-token:{sid}", "t0k3n"]]
