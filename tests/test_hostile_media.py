"""One candidate's token must not be a way to exhaust the server (issue 11, 7-10, 16)."""

from __future__ import annotations

import asyncio
import json
import uuid
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from api.keys import MEDIA, REGISTRY
from engine.anomaly import AnomalyRules, AnomalySettings
from engine.detector import Detection
from media.peer import MESSAGE_BURST, SignalingError, check_offer
from media.video_track import ANALYSE_SIDE, VideoAnalyzer
from tests.conftest import AppFactory
from testing import Candidate
from tests.test_media import live_client, new_session


async def _offer_with(*kinds: str, data_channel: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in kinds:
            pc.addTransceiver(kind, direction="sendrecv")
        if data_channel:
            pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_an_offer_may_carry_one_section_of_each_kind():
    check_offer(await _offer_with("audio", "video"))
    for kinds in (("audio", "audio"), ("audio", "video", "video")):
        with pytest.raises(SignalingError, match="at most 1 allowed"):
            check_offer(await _offer_with(*kinds))


async def test_hundreds_of_media_sections_are_refused_before_any_transport(
    make_client: AppFactory,
):
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    base = await _offer_with("audio")
    section = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
    flood = base + section * 300
    resp = await client.post(f"/sessions/{sid}/offer", json={"sdp": flood, "type": "offer"})
    assert resp.status == 400
    assert "at most 1" in (await resp.json())["error"]
    # Nothing was set up for it: the interview has no call, the session is still live.
    assert client.server.app[MEDIA].live(uuid.UUID(sid)) is None
    assert client.server.app[REGISTRY].get(uuid.UUID(sid)) is not None


class _Frames(MediaStreamTrack):
    kind = "video"

    def __init__(self, *sizes: tuple[int, int]) -> None:
        super().__init__()
        self._sizes = list(sizes)

    async def recv(self) -> av.VideoFrame:
        if not self._sizes:
            raise MediaStreamError
        width, height = self._sizes.pop(0)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts, frame.time_base = 0, Fraction(1, 90000)
        await asyncio.sleep(0.05)
        return frame


class _Sizes:
    """A detector that only notes the size of what it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        self.seen.append((rgb.shape[1], rgb.shape[0]))
        return []


async def test_huge_frames_are_refused_and_large_ones_scaled_before_conversion():
    detector = _Sizes()
    recorded: list[av.VideoFrame] = []
    analyzer = VideoAnalyzer(
        _Frames((8192, 8192), (3840, 2160), (640, 480)),
        detector=detector,  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        fps=100,
        rules=AnomalyRules(AnomalySettings()),
        on_anomalies=lambda anomalies, rgb: None,
        on_frame=recorded.append,
        name="huge",
    )
    await asyncio.sleep(1.0)
    await analyzer.close()
    assert analyzer.stats.frames_in == 3 and analyzer.stats.frames_refused == 1
    assert (8192, 8192) not in [(f.width, f.height) for f in recorded]  # not recorded either
    assert detector.seen and all(max(size) <= ANALYSE_SIDE for size in detector.seen)
    assert (ANALYSE_SIDE, 720) in detector.seen or (640, 480) in detector.seen


async def test_a_message_flood_is_cut_to_the_rate_and_nothing_is_echoed(make_client: AppFactory):
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    candidate = Candidate(None, None)
    try:
        await candidate.join(client, sid)
        candidate.send("[" * 16000)  # deep nesting: an error, not a dropped connection
        (error,) = await candidate.wait_for("error", timeout=10)
        assert "JSON" in error["message"]
        secret = "x" * 5000
        for _ in range(4 * MESSAGE_BURST):
            candidate.send({"type": secret})
        await asyncio.sleep(1.0)
        errors = candidate.of("error")
        assert 1 < len(errors) <= MESSAGE_BURST + 25
        assert all(secret[:10] not in json.dumps(e) for e in errors)
        call = client.server.app[MEDIA].live(uuid.UUID(sid))
        assert call is not None and call.peer.messages_refused >= 2 * MESSAGE_BURST
        await asyncio.sleep(1.0)  # the allowance refills: the candidate is served again
        candidate.send({"type": "ping"})
        await candidate.wait_for("pong", timeout=10)
        metrics = await (await client.get("/metrics")).text()
        assert 'interview_input_refused_total{kind="message_rate"}' in metrics
    finally:
        await candidate.close()


async def test_a_message_that_never_ends_is_cut_before_it_is_whole(make_client: AppFactory):
    """Fragments of one huge message (a sender that ignores the size the
    server accepts) do not pile up in the server's SCTP reassembly: past
    `MAX_REASSEMBLY_BYTES` the association is aborted, the call goes on, and
    the server serves everyone else."""
    from media.sctp import MAX_REASSEMBLY_BYTES

    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    hostile = Candidate(None, None)
    other = Candidate(None, None)
    try:
        await hostile.join(client, sid)
        await asyncio.wait_for(hostile.opened.wait(), 10)
        transport = hostile.pc.sctp
        transport._remote_max_message_size = 64 * 1024 * 1024  # lie to our own sender
        hostile.channel.send(b"x" * (3 * MAX_REASSEMBLY_BYTES))
        call = client.server.app[MEDIA].live(uuid.UUID(sid))
        assert call is not None
        for _ in range(300):
            if call.peer.messages_oversized:
                break
            await asyncio.sleep(0.1)
        assert call.peer.messages_oversized == 1
        server_sctp = call.peer.pc.sctp
        buffered = sum(len(c.user_data) for s in server_sctp._inbound_streams.values()
                       for c in s.reassembly)
        assert buffered <= MAX_REASSEMBLY_BYTES
        metrics = await (await client.get("/metrics")).text()
        assert 'interview_input_refused_total{kind="message_size"} 1.0' in metrics
        # Everyone else is served as before.
        second = (await new_session(client))["session_id"]
        await other.join(client, second)
        other.send({"type": "ping"})
        await other.wait_for("pong", timeout=10)
    finally:
        await hostile.close()
        await other.close()
