"""A local stand-in for the Gemini API, scripted per test.

`GeminiStub` serves what google-genai calls on a custom `base_url`:
`POST /{version}/models/{model}:streamGenerateContent?alt=sse` (Server-Sent
Events, one `data:` frame per chunk) and `POST /{version}/models/{model}:generateContent`
(one JSON body). It listens on 127.0.0.1 on a free port and never forwards
anything: tests talk to the real SDK, the SDK talks to this.

Each request takes the next scripted behaviour, in order:

- `Reply(chunks)`: status 200 and the chunks, each after its own delay; the
  last one carries `finish_reason` as Gemini's does.
- `Fail(status)`: that status with a JSON error body shaped like Google's.
- `Stall(seconds)`: accept the request and send nothing (not even headers,
  unless `after_headers`) for `seconds`.
- `Drop(chunks)`: send the chunks, then cut the connection mid-body.

Every request is recorded (path, query, headers, JSON body) so a test can
assert what the SDK actually sent; `sent` lists streamed chunk texts as
they go out, so a test can tell what the client had seen at a given moment.
A request with nothing scripted gets a 500 and is counted in `unscripted`.

google-genai 3.6.1 with an API key and a custom `base_url` calls
`/v1/models/...` (its default API version for the Gemini API is "v1"); the
stub accepts any version segment and records the path, so tests assert it.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

__all__ = [
    "Chunk",
    "Drop",
    "Fail",
    "GeminiStub",
    "Recorded",
    "Reply",
    "Script",
    "Stall",
    "chunks",
]

# The `status` string Google puts next to each HTTP code in its error bodies.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of model text, sent `delay_s` after the previous one."""

    text: str
    delay_s: float = 0.0


def chunks(*texts: str, delay_s: float = 0.0) -> tuple[Chunk, ...]:
    """Chunks with the same delay before each."""
    return tuple(Chunk(text, delay_s) for text in texts)


@dataclass(frozen=True)
class Reply:
    """A successful answer; `finish_reason=None` ends the stream without one."""

    chunks: tuple[Chunk, ...]
    finish_reason: str | None = "STOP"
    # The finish reason alone in one more chunk, its content without parts: how
    # Gemini often ends a stream (seen in pydantic/pydantic-ai#2631's logs).
    finish_apart: bool = False


@dataclass(frozen=True)
class Fail:
    """An HTTP error with Google's JSON error body."""

    status: int
    message: str = "stub error"


@dataclass(frozen=True)
class Stall:
    """Accept the request, then say nothing for `seconds`."""

    seconds: float
    after_headers: bool = False


@dataclass(frozen=True)
class Drop:
    """Stream `chunks`, then close the connection before the body ends."""

    chunks: tuple[Chunk, ...]


Script = Reply | Fail | Stall | Drop


@dataclass(frozen=True)
class Recorded:
    """One request as the stub saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def method(self) -> str:
        """`streamGenerateContent` or `generateContent`."""
        return self.path.rsplit(":", 1)[-1]


def _response_json(text: str, finish_reason: str | None) -> dict[str, Any]:
    content = {"role": "model", "parts": [{"text": text}]}
    candidate: dict[str, Any] = {"content": content, "index": 0}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    return {"candidates": [candidate], "modelVersion": "stub"}


def _sse_frame(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\r\n\r\n".encode()


def _error_json(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
        }
    }


@dataclass
class GeminiStub:
    """The scripted server; `await start()` before use, `await close()` after."""

    requests: list[Recorded] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)  # streamed chunk texts, as written
    unscripted: int = 0
    _scripts: deque[Script] = field(default_factory=deque)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _server: TestServer | None = None

    def script(self, *behaviours: Script) -> None:
        """Queue behaviours for the next requests, one each, in order."""
        self._scripts.extend(behaviours)

    @property
    def base_url(self) -> str:
        """Root URL to hand to the SDK as `base_url`."""
        assert self._server is not None, "start() the stub first"
        return str(self._server.make_url("/"))

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        app = web.Application()
        app.router.add_post("/{version}/models/{call}", self._handle)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        await self._server.start_server()

    async def close(self) -> None:
        """Wake stalled handlers and stop the server."""
        self._closing.set()
        if self._server is not None:
            await self._server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Recorded(
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=await request.json(),
            )
        )
        if not self._scripts:
            self.unscripted += 1
            return web.json_response(_error_json(500, "stub: nothing scripted"), status=500)
        behaviour = self._scripts.popleft()
        streaming = request.path.endswith(":streamGenerateContent")
        if isinstance(behaviour, Fail):
            return web.json_response(
                _error_json(behaviour.status, behaviour.message), status=behaviour.status
            )
        if isinstance(behaviour, Stall):
            return await self._stall(request, behaviour)
        if streaming:
            return await self._stream(request, behaviour)
        return await self._whole(request, behaviour)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end early when the stub closes so teardown never waits."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    async def _stall(self, request: web.Request, stall: Stall) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if stall.after_headers:
            await response.prepare(request)
        await self._pause(stall.seconds)
        if not stall.after_headers:
            await response.prepare(request)
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, behaviour: Reply | Drop) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        finish = behaviour.finish_reason if isinstance(behaviour, Reply) else None
        apart = isinstance(behaviour, Reply) and behaviour.finish_apart
        for index, chunk in enumerate(behaviour.chunks):
            await self._pause(chunk.delay_s)
            last = index == len(behaviour.chunks) - 1 and not apart
            await response.write(_sse_frame(_response_json(chunk.text, finish if last else None)))
            self.sent.append(chunk.text)
        if apart:
            candidate = {"content": {"role": "model"}, "finishReason": finish, "index": 0}
            await response.write(_sse_frame({"candidates": [candidate], "modelVersion": "stub"}))
        if isinstance(behaviour, Drop):
            self._cut(request)
            return response
        await response.write_eof()
        return response

    async def _whole(self, request: web.Request, behaviour: Reply | Drop) -> web.StreamResponse:
        if isinstance(behaviour, Drop):
            self._cut(request)
            return web.StreamResponse()
        for chunk in behaviour.chunks:
            await self._pause(chunk.delay_s)
        text = "".join(chunk.text for chunk in behaviour.chunks)
        return web.json_response(_response_json(text, behaviour.finish_reason))

    @staticmethod
    def _cut(request: web.Request) -> None:
        """Close the socket under a response whose body is unfinished."""
        assert request.transport is not None
        request.transport.close()
