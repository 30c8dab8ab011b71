"""Property-based tests of the media side's parsers of hostile input:
`check_offer` (SDP) and `decode` (data-channel messages) (issue 11)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import EndRequest, Ping
from media.peer import SignalingError, check_offer
from media.wire import MAX_MESSAGE_BYTES, decode
from tests.conftest import AppFactory

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

SDP_LINE = st.one_of(
    st.sampled_from([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
        "a=mid:0", "a=sendrecv", "a=rtpmap:111 opus/48000/2", "a=ice-ufrag:abcd",
        "a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa", "a=setup:actpass", "a=sctp-port:5000",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
    ]),
    st.text(max_size=80).map(lambda t: t.replace("\n", " ").replace("\r", " ")),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from("vosmtcab"), st.text(max_size=40)),
)


def sdp_like() -> st.SearchStrategy[str]:
    """Mostly offers that look right, with arbitrary lines among them."""
    return st.builds(
        lambda lines, sep: sep.join(lines) + sep,
        st.lists(SDP_LINE, max_size=30).map(lambda lines: ["v=0", *lines]),
        st.sampled_from(["\r\n", "\n"]),
    )


@FAST
@given(st.one_of(st.text(), sdp_like()))
def test_check_offer_raises_only_signaling_error(sdp: str):
    try:
        check_offer(sdp)
    except SignalingError:
        pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
MESSAGES = st.one_of(
    st.text(), st.binary(),
    JSON.map(json.dumps),
    st.dictionaries(st.just("type"), JSON | st.sampled_from(["ping", "end", "pong"])).map(json.dumps),
    st.integers(1, 100_000).map(lambda n: "[" * n),
    st.integers(1, 100_000).map(lambda n: '{"a":' * n),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just("x" * (MAX_MESSAGE_BYTES + 1)),
)


@FAST
@given(MESSAGES)
def test_decode_always_answers_a_message_or_an_error(raw: str | bytes):
    result = decode(raw)
    assert isinstance(result, (Ping, EndRequest, str))
    if isinstance(result, str):
        assert len(result) < 200  # an error text, not an echo of the input


@pytest.mark.timeout(300)
async def test_sdp_that_passes_check_offer_never_makes_a_5xx(make_client: AppFactory):
    # What check_offer lets through goes to aiortc: the server must answer 4xx
    # for anything aiortc refuses (never 500), and stay up.
    client: TestClient = await make_client(ice_loopback_only=True, interviewer=False)
    samples: list[str] = []

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(sdp_like().filter(_passes))
    def collect(sdp: str) -> None:
        samples.append(sdp)

    await asyncio.to_thread(collect)
    for sdp in samples:
        sid = (await (await client.post("/sessions", json={"job_role": "QA"})).json())["session_id"]
        resp = await client.post(f"/sessions/{sid}/offer", json={"sdp": sdp, "type": "offer"})
        assert resp.status < 500, (resp.status, await resp.text(), sdp)
        if resp.status == 200:
            await client.delete(f"/sessions/{sid}")
    assert (await client.get("/healthz")).status == 200


def _passes(sdp: str) -> bool:
    try:
        check_offer(sdp)
    except SignalingError:
        return False
    return True


