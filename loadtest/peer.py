"""One candidate connection: a real aiortc peer with the `events` channel.

`CandidatePeer` offers audio as sendrecv (the interviewer answers on the same
transceiver) and video as sendonly, pinned to Opus and VP8 because the
tracks send packets already encoded with them. It pings every 2 s as the
browser client does, and records what the server says in an `EventLog`
shared across the candidate's connections (a rejoin opens a new peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from loadtest.tracks import CameraTrack, InterviewerEar, MicrophoneTrack

__all__ = ["CandidatePeer", "Event", "EventLog", "SignalingFailed"]

PING_S = 2.0
CONNECT_TIMEOUT_S = 30.0
# A rejoin races the server closing the old connection: until that is done
# and the session is parked, the offer gets 409. Retry as a reconnecting
# client would.
BUSY_RETRIES = 40
BUSY_RETRY_S = 0.25


class SignalingFailed(Exception):
    """The server refused the offer."""


@dataclass(frozen=True)
class Event:
    at: float  # monotonic arrival time
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.body.get("type"))


class EventLog:
    """Data-channel events in arrival order; waiters wake on each arrival."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def add(self, raw: str | bytes) -> None:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {"type": "unparsable", "raw": repr(raw)[:200]}
        self.events.append(Event(time.monotonic(), body if isinstance(body, dict) else {}))
        waiter, self._changed = self._changed, asyncio.Event()
        waiter.set()

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    def find(self, match: Callable[[Event], bool], since: int = 0) -> int | None:
        return next((i for i in range(since, len(self.events)) if match(self.events[i])), None)

    async def wait_for(
        self, match: Callable[[Event], bool], *, since: int = 0, timeout: float
    ) -> int | None:
        """Index of the first matching event at or after `since`; None on timeout."""
        deadline = time.monotonic() + timeout
        while (found := self.find(match, since)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return found


def _codecs(kind: str, mime: str) -> list[RTCRtpCodecCapability]:
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs
            if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")]


class CandidatePeer:
    def __init__(
        self, microphone: MicrophoneTrack, camera: CameraTrack, log: EventLog, ear: InterviewerEar
    ) -> None:
        self.microphone, self.camera = microphone, camera
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        audio = self.pc.addTransceiver(microphone, direction="sendrecv")
        audio.setCodecPreferences(_codecs("audio", "audio/opus"))
        video = self.pc.addTransceiver(camera, direction="sendonly")
        video.setCodecPreferences(_codecs("video", "video/VP8"))
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", log.add)
        self._ear = ear
        self._connected = asyncio.Event()
        self._opened = asyncio.Event()
        self.channel.on("open", self._opened.set)
        self.pc.on("connectionstatechange", self._state_changed)
        self.pc.on("track", self._track)
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected_at: float | None = None
        self.closed_at: float | None = None
        self.lost = asyncio.Event()  # the connection failed or the server closed it
        self.busy_retries = 0

    async def connect(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str],
                      *, rejoin: bool = False) -> float:
        """Offer, apply the answer, wait for ICE+DTLS and the channel; seconds taken.
        With `rejoin`, a 409 (the old connection is still closing) is retried."""
        started = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self._post_offer(http, url, headers, rejoin)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_S)
        connect_s = time.monotonic() - started
        await asyncio.wait_for(self._opened.wait(), CONNECT_TIMEOUT_S)
        self._spawn(self._ping(), "ping")
        return connect_s

    async def _post_offer(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str],
                          rejoin: bool) -> str:
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        for _ in range(BUSY_RETRIES):
            async with http.post(url, json=body, headers=headers) as resp:
                if resp.status == 409 and rejoin:
                    self.busy_retries += 1
                    await asyncio.sleep(BUSY_RETRY_S)
                    continue
                if resp.status != 200:
                    raise SignalingFailed(f"offer: HTTP {resp.status} {(await resp.text())[:200]}")
                return str((await resp.json())["sdp"])
        raise SignalingFailed(f"offer: still 409 after {BUSY_RETRIES * BUSY_RETRY_S:g} s of rejoining")

    def send(self, message: dict[str, Any]) -> bool:
        if self.channel.readyState != "open":
            return False
        self.channel.send(json.dumps(message))
        return True

    async def close(self) -> None:
        """Close the connection (idempotent): to the server, a closed tab."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        for task in list(self._tasks):
            task.cancel()
        await self.pc.close()
        # Ours to stop: aiortc's senders leave their tracks running.
        self.microphone.stop()
        self.camera.stop()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Any, name: str) -> None:
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

    def _track(self, track: Any) -> None:
        if track.kind == "audio":
            self._spawn(self._ear.listen(track), "interviewer-ear")

    async def _ping(self) -> None:
        while self.channel.readyState == "open":
            self.channel.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(PING_S)
