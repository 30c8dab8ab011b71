"""Live media over real aiortc peers on loopback: transcript, anomalies, saving."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import av
import pytest
from aiohttp.test_utils import TestClient

from api.keys import MEDIA, REGISTRY
from testing import Candidate, PhotoTrack, SpeechTrack, transcript_of, wer
from tests.conftest import CLIP, SHARED, SPEECH, AppFactory

PHOTOS = SHARED / "testdata" / "photos"
ONE_PERSON = PHOTOS / "coco_000000000436_1person_eating_closeup.jpg"
TWO_PERSONS = PHOTOS / "coco_000000000165_2persons_indoor.jpg"

needs_photos = pytest.mark.skipif(
    not PHOTOS.is_dir(), reason=f"real photos not found at {PHOTOS} (../shared is beside CI's checkout)"
)


async def live_client(make_client: AppFactory, **overrides: Any) -> TestClient:
    overrides.setdefault("interviewer", False)  # media only: test_interview.py has the voice
    return await make_client(ice_loopback_only=True, keepalive_timeout_s=3.0, **overrides)


async def new_session(client: TestClient, **request: Any) -> dict[str, Any]:
    resp = await client.post("/sessions", json={"job_role": "Backend engineer"}, **request)
    assert resp.status == 201
    return await resp.json()


async def stored_row(
    db: asyncpg.Connection, sid: str, timeout: float = 30,
    until: Callable[[asyncpg.Record], bool] = lambda row: True,
) -> asyncpg.Record:
    """The row once it is final: no longer in progress, no call still draining
    into it (and `until` holds)."""
    async def ended() -> asyncpg.Record:
        while True:
            row = await db.fetchrow(
                "SELECT * FROM interview_sessions WHERE session_id = $1", uuid.UUID(sid)
            )
            open_ = ("scheduled", "in_progress")
            if row is not None and row["status"] not in open_ and until(row) and not (
                json.loads(row["session_information"] or "{}").get("closing")
            ):
                return row
            await asyncio.sleep(0.2)
    return await asyncio.wait_for(ended(), timeout)


@needs_photos
async def test_speech_and_two_people_make_a_transcript_and_an_anomaly(
    make_client: AppFactory, db: asyncpg.Connection
):
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), PhotoTrack(TWO_PERSONS))
    try:
        await candidate.join(client, sid)
        (transcript,) = await candidate.wait_for("transcript", timeout=60)
        assert transcript["final"] is True and transcript["end"] > transcript["start"]
        error_rate = wer(transcript_of(CLIP), transcript["text"])
        assert error_rate <= 0.15, transcript["text"]
        (anomaly,) = await candidate.wait_for("anomaly", timeout=30)
        assert anomaly["anomaly"] == "multiple_persons" and anomaly["count"] >= 2
        assert all(d.startswith("person ") for d in anomaly["detections"])
        evidence = await client.get(anomaly["evidence_url"])
        assert evidence.status == 200 and (await evidence.read())[:3] == b"\xff\xd8\xff"
        metrics = await (await client.get("/metrics")).text()
        assert 'interview_frames_received_total{kind="audio"}' in metrics
        assert "interview_live_sessions 1.0" in metrics
        assert "interview_transcript_latency_seconds_count 1.0" in metrics
        assert 'interview_anomalies_total{type="multiple_persons"} 1.0' in metrics
        assert "process_resident_memory_bytes" in metrics
        for queue in ("audio_frames", "speech_pieces", "recording_frames", "asr_jobs",
                      "detect_jobs", "video_gate_jobs", "vad_jobs", "tts_jobs", "files_jobs"):
            assert f'interview_queue_depth{{queue="{queue}"}}' in metrics
            assert f'interview_queue_oldest_seconds{{queue="{queue}"}}' in metrics
        assert "interview_recording_frames_dropped_total 0.0" in metrics
        assert "interview_detector_runs_skipped_total" in metrics  # the change gate's
        candidate.send({"type": "end"})
        row = await stored_row(db, sid)
    finally:
        await candidate.close()
    # Counters survive the session's end (they move to the closed totals).
    after = await (await client.get("/metrics")).text()
    assert _sample(after, 'interview_frames_received_total{kind="audio"}') >= _sample(
        metrics, 'interview_frames_received_total{kind="audio"}') > 0
    # Where the CPU went, by stage: each stage that ran spent some, and the
    # stages inside this process add up to no more than the process spent.
    stages = {stage: _sample(after, f'interview_cpu_seconds_total{{stage="{stage}"}}')
              for stage in ("vad", "turn", "asr", "detection", "recording", "files", "media")}
    assert all(stages[s] > 0 for s in ("vad", "asr", "detection", "recording", "media")), stages
    assert sum(stages.values()) <= _sample(after, "process_cpu_seconds_total") + 0.5
    assert row["status"] == "completed" and row["end_time"] is not None
    info = json.loads(row["session_information"])
    assert info["asr_model"] == "base"
    # provenance: how Whisper decoded the pieces (sized to each, plus 3 s)
    assert info["asr_decoding"] == "fit+3s/0.02s>=0s"
    (turn,) = info["conversation_history"]
    assert turn["role"] == "user" and wer(transcript_of(CLIP), turn["content"]) <= 0.15
    assert [a["type"] for a in info["anomalies_detected"]] == ["multiple_persons"]
    await assert_recording(client, row["recording_url"], min_seconds=5, video=True)
    assert set(info["anomalies_detected"][0]) == {"timestamp", "type", "count", "detections",
                                                  "evidence_url", "offset_s"}
    # On the recording's clock: the anomaly and the answer inside the recording.
    assert 0 <= info["anomalies_detected"][0]["offset_s"] < 30
    assert 0 <= turn["offset_s"] < turn["end_offset_s"] < 30


@needs_photos
async def test_one_person_and_silence_make_no_anomaly_and_closing_saves(
    make_client: AppFactory, db: asyncpg.Connection
):
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    candidate = Candidate(SpeechTrack(None), PhotoTrack(ONE_PERSON))
    await candidate.join(client, sid)
    media = client.server.app[MEDIA].live(uuid.UUID(sid))
    await asyncio.sleep(4)  # eight sampled frames at 2 fps
    assert media is not None and media.video is not None
    assert media.video.stats.samples_analysed >= 4
    await candidate.close()  # the candidate leaves without saying "end"
    row = await stored_row(db, sid, timeout=10)
    assert row["status"] == "completed"
    info = json.loads(row["session_information"])
    assert info["anomalies_detected"] == [] and info["conversation_history"] == []
    assert client.server.app[MEDIA].live(uuid.UUID(sid)) is None


async def test_silent_candidate_is_ended_by_the_keepalive(
    make_client: AppFactory, db: asyncpg.Connection
):
    """A tab that vanishes sends nothing more: no frames, no pings."""
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    candidate = Candidate(None, None)  # data channel only, and it never pings
    await candidate.join(client, sid)
    row = await stored_row(db, sid, timeout=10)
    assert row["status"] == "completed"
    await candidate.close()


async def test_data_channel_errors_and_pings(make_client: AppFactory):
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    candidate = Candidate(None, None)
    try:
        await candidate.join(client, sid)
        candidate.send("not json")
        candidate.send({"no": "type"})
        candidate.send({"type": "dance"})
        candidate.send({"type": "ping"})
        errors = await candidate.wait_for("error", count=3, timeout=10)
        assert "JSON" in errors[0]["message"] and "type" in errors[1]["message"]
        assert "unknown message type" in errors[2]["message"]
        assert "dance" not in errors[2]["message"]  # input is never echoed
        await candidate.wait_for("pong", timeout=10)
        assert client.server.app[REGISTRY].get(uuid.UUID(sid)) is not None  # still live
    finally:
        await candidate.close()


async def test_signaling_bad_input(make_client: AppFactory, db: asyncpg.Connection):
    client = await live_client(make_client, api_key="k")
    key = {"Authorization": "Bearer k"}
    session = await new_session(client, headers=key)
    sid, token = session["session_id"], session["token"]
    url = f"/sessions/{sid}/offer"
    candidate = Candidate(None, None)
    offer = {"sdp": await candidate.offer(), "type": "offer"}
    # Credentials: none, wrong, the token in a header or the query, the API key.
    assert (await client.post(url, json=offer)).status == 401
    assert (await client.post(url, json=offer, headers={"Authorization": "Bearer x"})).status == 401
    bad = [
        ({"sdp": "v=0\r\nnonsense", "type": "offer"}, 400),
        ({"sdp": offer["sdp"], "type": "answer"}, 400),
        ({"sdp": 42, "type": "offer"}, 400),
        ({"sdp": "v=0\r\n" + "a=x\r\n" * 20000, "type": "offer"}, 413),
    ]
    for body, status in bad:
        resp = await client.post(url, json=body, params={"token": token})
        assert resp.status == status, (body, await resp.text())
        assert "error" in await resp.json()
    resp = await client.post(url, data="{", params={"token": token},
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    await candidate.join(client, sid, headers={"Authorization": f"Bearer {token}"})
    # One live peer per session.
    second = Candidate(None, None)
    resp = await client.post(url, json={"sdp": await second.offer(), "type": "offer"}, headers=key)
    assert resp.status == 409
    await second.close()
    # Unknown and ended sessions.
    resp = await client.post(f"/sessions/{uuid.uuid4()}/offer", json=offer, headers=key)
    assert resp.status == 404
    await client.post(f"/sessions/{sid}/end", headers=key)
    assert (await client.post(url, json=offer, headers=key)).status == 409
    assert (await client.post("/sessions/nope/offer", json=offer, headers=key)).status == 400
    await candidate.close()
    assert (await client.get("/healthz")).status == 200


async def test_whip_ingest(make_client: AppFactory, db: asyncpg.Connection):
    client = await live_client(make_client)
    sid = (await new_session(client))["session_id"]
    candidate = Candidate(SpeechTrack(None), None)
    try:
        offer = await candidate.offer()
        resp = await client.post(f"/whip/{sid}", data=offer,
                                 headers={"Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        assert resp.content_type == "application/sdp"
        location = resp.headers["Location"]
        await candidate.accept(await resp.text())
        # Connected before the DELETE: closing a peer mid-ICE trips an aiortc
        # race (its connect task raises "RTCIceTransport is closed", unretrieved).
        await asyncio.wait_for(candidate.opened.wait(), 20)
        resp = await client.patch(location, data="a=candidate:1",
                                  headers={"Content-Type": "application/trickle-ice-sdpfrag"})
        assert resp.status == 405 and "DELETE" in resp.headers["Allow"]
        resp = await client.post(f"/whip/{sid}", data="{}", headers={"Content-Type": "application/json"})
        assert resp.status == 415
        assert (await client.delete(location)).status == 200
        row = await stored_row(db, sid, timeout=10)
        assert row["status"] == "completed"
    finally:
        await candidate.close()


async def assert_recording(client: TestClient, url: str, *, min_seconds: float, video: bool) -> None:
    """The finished recording is served and holds the session's media."""
    assert url.endswith("/recording")
    for _ in range(100):  # finalized in the background once the session is gone
        resp = await client.get(url)
        if resp.status == 200:
            break
        await asyncio.sleep(0.2)
    assert resp.status == 200 and resp.content_type == "video/webm"
    data = await resp.read()
    container = av.open(io.BytesIO(data))
    kinds = sorted(s.type for s in container.streams)
    assert kinds == (["audio", "video"] if video else ["audio"])
    assert container.duration is not None and container.duration / 1e6 >= min_seconds
    container.close()


async def test_a_dropped_candidate_rejoins_the_same_session(
    make_client: AppFactory, db: asyncpg.Connection
):
    client = await live_client(make_client, rejoin_grace_s=30.0)
    sid = (await new_session(client))["session_id"]
    first = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
    await first.join(client, sid)
    await first.wait_for("transcript", timeout=60)
    await first.close()  # the network drops
    row = await stored_row(db, sid, timeout=15)
    assert row["status"] == "completed"  # saved at once...
    second_clip = SPEECH / "sense_and_sensibility_01_austen_64kb-0890"
    second = Candidate(SpeechTrack(second_clip.with_suffix(".wav")), None)
    try:
        await second.join(client, sid)  # ...and reopened by a new peer in the grace window
        assert client.server.app[REGISTRY].get(uuid.UUID(sid)) is not None
        await second.wait_for("transcript", timeout=60)
        second.send({"type": "end"})
        row = await stored_row(db, sid, timeout=15, until=lambda r: len(
            json.loads(r["session_information"])["conversation_history"]) == 2)
    finally:
        await second.close()
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 1
    history = json.loads(row["session_information"])["conversation_history"]
    assert [t["role"] for t in history] == ["user", "user"]
    assert wer(transcript_of(second_clip), history[1]["content"]) <= 0.2
    # One clock across the rejoin (issue 14): the second answer is placed after
    # the first, not back at second 0 of a new call.
    assert 0 <= history[0]["offset_s"] < history[0]["end_offset_s"] < history[1]["offset_s"]
    # After the grace window, or once ended for real, the session cannot be rejoined.
    late = Candidate(None, None)
    resp = await client.post(f"/sessions/{sid}/offer", json={"sdp": await late.offer(), "type": "offer"})
    assert resp.status == 409
    await late.close()


def _sample(metrics: str, name: str) -> float:
    """The value of one sample line of a Prometheus text exposition."""
    (line,) = [line for line in metrics.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])
