"""One candidate's WebRTC peer: signaling answer, tracks, data channel, liveness.

The peer turns aiortc events into calls on plain objects: audio goes to an
`AudioTranscriber`, video to a `VideoAnalyzer`, and data-channel messages to
the session. It never ends the session itself; it asks the owner to, through
`on_gone(reason)`, and the owner closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack

from engine.aio import cancel_and_wait
from engine.events import ClientMessage, ErrorEvent, Event, Ping, PongEvent
from media.ice import rtc_configuration
from media.sctp import bound_reassembly
from media.wire import decode, encode

__all__ = ["InterviewPeer", "SignalingError", "check_offer"]

log = logging.getLogger(__name__)

# What one candidate may make the server do over the data channel: messages
# beyond the rate are dropped (counted), and events are dropped (counted)
# rather than queued without bound when the candidate does not read them.
MESSAGE_RATE = 20.0  # per second, sustained
MESSAGE_BURST = 40
MAX_BUFFERED_BYTES = 256 * 1024
# One m= section of each kind at most: every section is a transport (sockets,
# DTLS) and every extra track a decoder whose frames nobody needs.
MAX_SECTIONS = {"audio": 1, "video": 1, "application": 1}


class SignalingError(Exception):
    """The offer cannot be answered (malformed SDP, nothing to receive...)."""


class InterviewPeer:
    """The server side of one candidate's RTCPeerConnection."""

    def __init__(
        self,
        *,
        name: str,
        ice_servers: tuple[dict[str, Any], ...],
        keepalive_timeout_s: float,
        on_track: Callable[[MediaStreamTrack], None],
        on_message: Callable[[ClientMessage], None],
        on_gone: Callable[[str], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._keepalive_timeout_s = keepalive_timeout_s
        self._on_track = on_track
        self._on_message = on_message
        self._on_gone = on_gone
        self._on_connected = on_connected
        self._channel: RTCDataChannel | None = None
        # Events raised before the channel opens (the greeting starts at ICE
        # "connected", SCTP opens a moment later) wait here, boundedly.
        self._early: deque[str] = deque(maxlen=64)
        self._last_seen = asyncio.get_running_loop().time()
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self._allowance = _TokenBucket(MESSAGE_RATE, MESSAGE_BURST)
        self.messages_dropped = 0  # events for the candidate we could not send
        self.messages_refused = 0  # the candidate's messages beyond the rate
        self.messages_oversized = 0  # messages cut before they were whole (media/sctp.py)
        self.pc.on("datachannel", self._handle_datachannel)
        self.pc.on("track", self._handle_track)
        self.pc.on("connectionstatechange", self._handle_state)

    def _refuse_oversized(self) -> None:
        self.messages_oversized += 1

    def seen(self) -> None:
        """Something arrived from the candidate (a frame, a message)."""
        self._last_seen = asyncio.get_running_loop().time()

    async def answer(self, sdp: str, kind: str = "offer") -> str:
        """Apply the remote offer and return the local answer SDP (ICE gathered)."""
        check_offer(sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            if self.pc.sctp is not None:
                bound_reassembly(self.pc.sctp, self._refuse_oversized)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        # aiortc's SDP parser also asserts on what it cannot read (found by fuzzing).
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, AssertionError,
                InvalidAccessError, InvalidStateError, OperationError) as exc:
            raise SignalingError(f"cannot answer this offer: {exc!r}") from exc
        self.seen()
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self.name}-keepalive")
        return self.pc.localDescription.sdp

    def send(self, event: Event) -> bool:
        """Send an event on the `events` channel if it is open."""
        channel = self._channel
        if channel is None or channel.readyState != "open":
            if len(self._early) == self._early.maxlen:
                self.messages_dropped += 1
            self._early.append(encode(event))
            return False
        if channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.messages_dropped += 1  # the candidate is not reading
            return False
        channel.send(encode(event))
        return True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._watchdog)
        await self.pc.close()

    def _handle_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "events":
            log.info("%s: ignoring data channel %r", self.name, channel.label)
            return
        self._channel = channel
        channel.on("message", self._handle_raw_message)
        channel.on("open", self._flush_early)
        if channel.readyState == "open":
            self._flush_early()

    def _flush_early(self) -> None:
        channel = self._channel
        while channel is not None and channel.readyState == "open" and self._early:
            channel.send(self._early.popleft())

    def _handle_raw_message(self, raw: str | bytes) -> None:
        self.seen()
        if not self._allowance.take(asyncio.get_running_loop().time()):
            self.messages_refused += 1
            return
        message = decode(raw)
        if isinstance(message, str):
            self.send(ErrorEvent(message))
        elif isinstance(message, Ping):
            self.send(PongEvent())
        else:
            self._on_message(message)

    def _handle_track(self, track: MediaStreamTrack) -> None:
        log.info("%s: receiving %s", self.name, track.kind)
        self._on_track(track)

    def _handle_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s: connection %s", self.name, state)
        if state == "connected" and self._on_connected is not None:
            self._on_connected()
        if state in ("failed", "closed") and not self._closed:
            self._on_gone(f"connection {state}")

    async def _watch(self) -> None:
        """aiortc never reports "disconnected": notice silence ourselves."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self._keepalive_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            if loop.time() - self._last_seen > self._keepalive_timeout_s:
                self._on_gone(f"nothing received for {self._keepalive_timeout_s:g}s")
                return


def check_offer(sdp: str) -> None:
    """aiortc answers nearly anything, even text with no media: refuse that."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != "v=0":
        raise SignalingError("not an SDP offer: it must start with 'v=0'")
    media = [line[2:].split(" ", 1)[0] for line in lines if line.startswith("m=")]
    if not media:
        raise SignalingError("the offer has no media sections (m= lines)")
    for kind in sorted(set(media)):
        allowed = MAX_SECTIONS.get(kind, 0)
        if media.count(kind) > allowed:
            raise SignalingError(
                f"the offer has {media.count(kind)} {kind[:16]!r} sections; at most "
                f"{allowed} allowed (one audio, one video, one data channel)"
            )
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise SignalingError("the offer has no DTLS fingerprint")



class _TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
