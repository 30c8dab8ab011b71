"""One simulated candidate connection: a real aiortc peer with the `events` channel.

`Candidate` offers what the browser client offers: its microphone as
sendrecv (the interviewer answers on the same transceiver) and its camera
as sendonly. A track that sends pre-encoded packets names its codec, and the
offer is pinned to it. The server's events go to an `EventLog` (which may be
shared by the several connections of a candidate that rejoins), the
interviewer's audio to an `InterviewerEar`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp.test_utils import TestClient
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from testing.ear import InterviewerEar
from testing.events import EventLog

__all__ = ["Candidate", "SignalingFailed"]

CONNECT_TIMEOUT_S = 30.0
# A rejoin races the server closing the old connection: until that is done
# and the session is parked, the offer gets 409. Retry as a reconnecting
# client would.
BUSY_RETRIES = 40
BUSY_RETRY_S = 0.25

AudioT = TypeVar("AudioT", bound="MediaStreamTrack | None")
VideoT = TypeVar("VideoT", bound="MediaStreamTrack | None")


class SignalingFailed(Exception):
    """The server refused the offer."""


# What the candidate posts its offer with: an `aiohttp.ClientSession`
# (absolute URLs, or relative with `base_url`) or aiohttp's `TestClient`.
_Http = aiohttp.ClientSession | TestClient[Any, Any]


def _codecs(kind: str, mime: str) -> list[RTCRtpCodecCapability]:
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs
            if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")]


class Candidate(Generic[AudioT, VideoT]):
    """A candidate's peer connection; `connect()` (or `join()`) it, `close()` it."""

    def __init__(self, audio: AudioT, video: VideoT, *, log: EventLog | None = None,
                 ear: InterviewerEar | None = None) -> None:
        self.audio, self.video = audio, video
        self.log = log if log is not None else EventLog()
        self.ear = ear if ear is not None else InterviewerEar()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track, direction in ((audio, "sendrecv"), (video, "sendonly")):
            if track is not None:
                transceiver = self.pc.addTransceiver(track, direction=direction)
                codec = getattr(track, "codec", None)
                if codec is not None:
                    transceiver.setCodecPreferences(_codecs(track.kind, codec))
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self.log.add)
        self._connected = asyncio.Event()
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.pc.on("connectionstatechange", self._state_changed)
        self.pc.on("track", self._track)
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected_at: float | None = None
        self.closed_at: float | None = None
        self.lost = asyncio.Event()  # the connection failed or the server closed it
        self.busy_retries = 0
        # The last offer's answer: its status and `X-Node` (which node answered,
        # when several stand behind a balancer).
        self.answer_status: int | None = None
        self.answered_by: str | None = None

    async def offer(self) -> str:
        """Create the offer and set it as the local description; its SDP."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        """Apply the server's answer to `offer()` (for signaling done by hand, as WHIP)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def connect(self, http: _Http, url: str, *, rejoin: bool = False,
                      ping_s: float | None = None, timeout_s: float = CONNECT_TIMEOUT_S,
                      headers: Mapping[str, str] | None = None) -> float:
        """Offer to `url`, apply the answer, wait for ICE+DTLS and the channel;
        seconds taken. With `rejoin`, a 409 (the old connection is still
        closing) is retried; with `ping_s`, ping as the browser client does."""
        started = time.monotonic()
        await self.accept(await self._post_offer(http, url, await self.offer(), rejoin, headers or {}))
        await asyncio.wait_for(self._connected.wait(), timeout_s)
        connect_s = time.monotonic() - started
        await asyncio.wait_for(self.opened.wait(), timeout_s)
        if ping_s is not None:
            self._spawn(self._ping(ping_s), "ping")
        return connect_s

    async def join(self, http: _Http, session_id: str, *,
                   headers: Mapping[str, str] | None = None) -> float:
        """`connect()` to the session's offer URL, relative to `http`'s base."""
        return await self.connect(http, f"/sessions/{session_id}/offer", timeout_s=20,
                                  headers=headers)

    async def _post_offer(self, http: _Http, url: str, sdp: str, rejoin: bool,
                          headers: Mapping[str, str]) -> str:
        body = {"sdp": sdp, "type": "offer"}
        for _ in range(BUSY_RETRIES):
            async with http.post(url, json=body, headers=headers) as resp:
                self.answer_status, self.answered_by = resp.status, resp.headers.get("X-Node")
                if resp.status == 409 and rejoin:
                    self.busy_retries += 1
                    await asyncio.sleep(BUSY_RETRY_S)
                    continue
                if resp.status != 200:
                    raise SignalingFailed(f"offer: HTTP {resp.status} {(await resp.text())[:200]}")
                answer = await resp.json()
                if answer.get("type") != "answer":
                    raise SignalingFailed(f"offer: answered with {answer.get('type')!r}")
                return str(answer["sdp"])
        raise SignalingFailed(f"offer: still 409 after {BUSY_RETRIES * BUSY_RETRY_S:g} s of rejoining")

    def send(self, message: dict[str, Any] | str) -> bool:
        """Send a message (a dict as JSON, a string as it is) if the channel is open."""
        if self.channel.readyState != "open":
            return False
        self.channel.send(message if isinstance(message, str) else json.dumps(message))
        return True

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The bodies of the events of `kind` so far."""
        return [e.body for e in self.log.of(kind)]

    async def wait_for(self, kind: str, timeout: float = 60, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` events of `kind` have arrived; return them all.
        Raises TimeoutError after `timeout` seconds."""
        if not await self.log.until(lambda: len(self.log.of(kind)) >= count, timeout):
            raise TimeoutError(f"{len(self.of(kind))} of {count} {kind!r} events in {timeout:g} s")
        return self.of(kind)

    async def close(self) -> None:
        """Close the connection (idempotent): to the server, a closed tab."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        for task in list(self._tasks):
            task.cancel()
        await self.pc.close()
        # Ours to stop: aiortc's senders leave their tracks running.
        for track in (self.audio, self.video):
            if track is not None:
                track.stop()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self._connected.set()
        elif state in ("failed", "closed"):
            if self.closed_at is None:
                self.closed_at = time.monotonic()
            self.lost.set()

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self.ear.listen(track), "interviewer-ear")

    async def _ping(self, every_s: float) -> None:
        while self.channel.readyState == "open":
            self.channel.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(every_s)
