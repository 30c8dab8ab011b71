"""Hostile or unlucky HTTP input never takes the server down (issue 11).

Real TCP against the real app and a real PostgreSQL: bodies split across
segments, chunked bodies, text PostgreSQL cannot store, deep JSON, raw
non-ASCII header bytes, encoded multipart parts.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import AppFactory


async def raw_request(
    client: TestClient, head: bytes, *pieces: bytes, pause_s: float = 0.3
) -> tuple[int, dict[str, Any]]:
    """Send `head` then each piece as its own write, `pause_s` apart; the
    status and JSON body of the answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head)
        for piece in pieces:
            await writer.drain()
            await asyncio.sleep(pause_s)
            writer.write(piece)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    return int(status_line.split()[1]), json.loads(body) if body else {}


def request_head(method: str, path: str, client: TestClient, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{client.server.port}",
             "Connection: close", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- 1. bodies that arrive in pieces -------------------------------------------------


async def test_a_body_in_two_segments_is_read_whole(client: TestClient, db: asyncpg.Connection):
    body = json.dumps({"job_role": "Backend engineer " + "x" * 100}).encode()
    head = request_head("POST", "/sessions", client, Content_Type="application/json",
                        Content_Length=str(len(body)))
    status, answer = await raw_request(client, head, body[:40], body[40:])
    assert status == 201, answer
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 1


async def test_an_offer_in_two_segments_is_read_whole(client: TestClient):
    # A browser's 3–8 KB offer often arrives in two segments; a short read
    # answered "400 malformed JSON", which the client treats as final.
    sid = (await (await client.post("/sessions", json={"job_role": "QA"})).json())["session_id"]
    body = json.dumps({"type": "offer", "sdp": "v=0\r\n" + "a=x-padding:" + "y" * 6000}).encode()
    head = request_head("POST", f"/sessions/{sid}/offer", client,
                        Content_Type="application/json", Content_Length=str(len(body)))
    status, answer = await raw_request(client, head, body[:3000], body[3000:])
    assert status == 400 and "malformed JSON" not in answer["error"], answer


def chunked(*pieces: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


async def test_a_chunked_body_in_pieces_is_read_whole(client: TestClient):
    body = json.dumps({"job_role": "Data analyst"}).encode()
    head = request_head("POST", "/sessions", client, Content_Type="application/json",
                        Transfer_Encoding="chunked")
    status, answer = await raw_request(client, head, *chunked(body[:10], body[10:]))
    assert status == 201, answer


async def test_a_chunked_body_over_the_limit_is_413(client: TestClient):
    head = request_head("POST", "/sessions", client, Content_Type="application/json",
                        Transfer_Encoding="chunked")
    piece = b'{"job_role": "' + b"x" * (600 * 1024)
    status, answer = await raw_request(client, head, *chunked(piece, b"x" * (600 * 1024)),
                                       pause_s=0.05)
    assert status == 413, answer


# -- 5. deep JSON, raw header bytes ---------------------------------------------------


async def test_deeply_nested_json_is_400(client: TestClient):
    sid = (await (await client.post("/sessions", json={"job_role": "QA"})).json())["session_id"]
    for path in ("/sessions", f"/sessions/{sid}/offer"):
        resp = await client.post(path, data=b"[" * 60000, headers={"Content-Type": "application/json"})
        assert resp.status in (400, 413), (path, resp.status)
        assert "error" in await resp.json()
    resp = await client.post("/sessions", data=b"[" * 60000,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "nested" in (await resp.json())["error"]
    # The same depth in UTF-16 (json reads it), behind a string whose
    # character holds a quote byte (U+2200: 00 22): measured as json reads it.
    hidden = ('["\u2200",' + "[" * 10000 + "]" * 10000 + "]").encode("utf-16-le")
    resp = await client.post("/sessions", data=hidden, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "nested" in (await resp.json())["error"]


async def test_non_ascii_authorization_bytes_are_401(make_client: AppFactory):
    client = await make_client(api_key="s3cret-key")
    sid_resp = await client.post("/sessions", json={"job_role": "QA"},
                                 headers={"Authorization": "Bearer s3cret-key"})
    sid = (await sid_resp.json())["session_id"]
    for method, path in (("POST", "/sessions"), ("GET", "/metrics"),
                         ("POST", f"/sessions/{sid}/end")):
        head = request_head(method, path, client, Content_Length="0")
        head = head.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
        status, answer = await raw_request(client, head)
        assert status == 401, (path, status, answer)


# -- 2. text PostgreSQL cannot store ---------------------------------------------------


BAD_TEXT = ["QA\u0000lead", "QA \ud800", "\udcff"]


async def test_unstorable_json_text_is_400_and_registers_nothing(
    client: TestClient, db: asyncpg.Connection
):
    for text in BAD_TEXT:
        for body in ({"job_role": text}, {"job_role": "QA", "resume_url": f"https://x.org/{text}"}):
            raw = json.dumps(body).encode()  # ensure_ascii: "\ud800" travels as an escape
            resp = await client.post("/sessions", data=raw,
                                     headers={"Content-Type": "application/json"})
            assert resp.status == 400, (body, resp.status, await resp.text())
            assert "error" in await resp.json()
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0
    assert (await (await client.get("/healthz")).json())["live_sessions"] == 0


async def test_unstorable_multipart_text_is_400(client: TestClient, db: asyncpg.Connection):
    for field, value in (("job_role", "QA\u0000"), ("resume_url", "https://x.org/\u0000")):
        parts = [({"Content-Disposition": f'form-data; name="{field}"'}, value.encode())]
        if field != "job_role":
            parts.append(({"Content-Disposition": 'form-data; name="job_role"'}, b"QA"))
        body, content_type = multipart(*parts)
        resp = await client.post("/sessions", data=io.BytesIO(body),
                                 headers={"Content-Type": content_type})
        assert resp.status == 400, (field, await resp.text())
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0


# -- 3. multipart parts: bounded, never decoded -------------------------------------------


def multipart(*parts: tuple[dict[str, str], bytes]) -> tuple[bytes, str]:
    boundary = "hardapiboundary"
    out = bytearray()
    for headers, body in parts:
        out += f"--{boundary}\r\n".encode()
        for k, v in headers.items():
            out += f"{k}: {v}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


async def test_an_encoded_multipart_part_is_refused(client: TestClient, db: asyncpg.Connection):
    bomb = gzip.compress(b"x" * (20 * 1024 * 1024))  # 20 MB in about 20 KB
    body, content_type = multipart(
        ({"Content-Disposition": 'form-data; name="job_role"', "Content-Encoding": "gzip"}, bomb),
    )
    resp = await client.post("/sessions", data=io.BytesIO(body), headers={"Content-Type": content_type})
    assert resp.status == 415, await resp.text()
    body, content_type = multipart(
        ({"Content-Disposition": 'form-data; name="job_role"',
          "Content-Transfer-Encoding": "base64"}, b"UUE="),
    )
    resp = await client.post("/sessions", data=io.BytesIO(body), headers={"Content-Type": content_type})
    assert resp.status == 415
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0


async def test_an_oversized_multipart_field_is_refused_without_reading_it_whole(client: TestClient):
    body, content_type = multipart(
        ({"Content-Disposition": 'form-data; name="job_role"'}, b"x" * (4 * 1024 * 1024)),
    )
    resp = await client.post("/sessions", data=io.BytesIO(body), headers={"Content-Type": content_type})
    assert resp.status == 413, await resp.text()
    body, content_type = multipart(
        ({"Content-Disposition": 'form-data; name="job_role"'}, b"QA"),
        ({"Content-Disposition": 'form-data; name="job_role"'}, b"QA"),
    )
    resp = await client.post("/sessions", data=io.BytesIO(body), headers={"Content-Type": content_type})
    assert resp.status == 400 and "twice" in (await resp.json())["error"]


async def test_a_compressed_request_body_is_refused(client: TestClient, db: asyncpg.Connection):
    raw = gzip.compress(json.dumps({"job_role": "QA" + " " * (30 * 1024 * 1024)}).encode())
    resp = await client.post("/sessions", data=io.BytesIO(raw), headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status == 415, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0


async def test_malformed_multipart_headers_are_400(client: TestClient):
    # Found by the fuzzer (tests/test_fuzz.py): aiohttp's multipart reader
    # raised InvalidHeader through the handler, a 500.
    body = b"--b\r\nContent-Disposition form-data\r\n\r\nQA\r\n--b--\r\n"
    resp = await client.post("/sessions", data=io.BytesIO(body),
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status == 400, await resp.text()
    assert "malformed multipart" in (await resp.json())["error"]
