"""Past capacity the server says "busy" (503 + Retry-After) instead of degrading everyone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from api.keys import MEDIA
from engine.admission import AdmissionSettings, LoadMeter
from testing import Candidate
from tests.conftest import AppFactory
from tests.test_media import live_client, new_session


def test_the_load_is_cpu_over_cores_or_the_oldest_queue_whichever_is_worse():
    meter = LoadMeter(AdmissionSettings(cpu_window_s=1.0, queue_age_full_s=2.0), cores=2)
    meter.sample(0.0, 0.0, 0.0)
    for second in range(1, 11):  # one core busy of two, for ten seconds
        meter.sample(float(second), second * 1.0, 0.0)
    assert meter.load == pytest.approx(0.5, abs=0.01)
    assert meter.refusal(3, continuing=False) is None  # below 0.7
    meter.sample(11.0, 11.0, 1.8)  # a queue whose oldest item waited 1.8 s
    assert meter.load == pytest.approx(0.9)
    refusal = meter.refusal(3, continuing=False)
    assert refusal is not None and "busy" in refusal.reason and refusal.retry_after_s > 0
    assert meter.refusal(3, continuing=True) is None  # a started interview is never turned away
    assert meter.refused == 1
    capped = LoadMeter(AdmissionSettings(max_sessions=2), cores=2)
    assert capped.refusal(1, continuing=False) is None
    assert "most interviews (2)" in capped.refusal(2, continuing=False).reason  # type: ignore[union-attr]


async def _offer(client, sid: str) -> tuple[int, dict, dict]:  # type: ignore[no-untyped-def]
    candidate = Candidate(None, None)
    try:
        resp = await client.post(f"/sessions/{sid}/offer",
                                 json={"sdp": await candidate.offer(), "type": "offer"})
        return resp.status, dict(resp.headers), await resp.json()
    finally:
        await candidate.close()


async def test_offers_past_max_sessions_get_503_and_get_in_when_a_slot_frees(
    make_client: AppFactory,
):
    client = await live_client(make_client, max_sessions=1)
    first = (await new_session(client))["session_id"]
    others = [(await new_session(client))["session_id"] for _ in range(2)]  # invitations: fine
    admitted = Candidate(None, None)
    await admitted.join(client, first)
    results = await asyncio.gather(*(_offer(client, sid) for sid in others))
    for status, headers, body in results:
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert "most interviews" in body["error"]
    health = await (await client.get("/healthz")).json()
    assert health["admits"] is False and "load" in health
    metrics = await (await client.get("/metrics")).text()
    assert "interview_admissions_refused_total 2.0" in metrics
    # The admitted candidate is not disturbed: still served.
    admitted.send({"type": "ping"})
    await admitted.wait_for("pong", timeout=10)
    await client.post(f"/sessions/{first}/end")
    await admitted.close()
    late = Candidate(None, None)
    try:
        await late.join(client, others[0])  # the slot is free again
    finally:
        await late.close()


async def test_a_busy_cpu_closes_admission_until_it_calms_down(make_client: AppFactory):
    client = await live_client(make_client, admit_load=0.3)
    sid = (await new_session(client))["session_id"]
    media = client.server.app[MEDIA]
    stop = threading.Event()

    def burn() -> None:  # real CPU work in this process, on every core it has
        while not stop.is_set():
            sum(i * i for i in range(10_000))

    burners = [threading.Thread(target=burn, daemon=True) for _ in range(4)]
    for thread in burners:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while media.load.load < 0.3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        status, headers, body = await _offer(client, sid)
        assert status == 503 and "busy" in body["error"] and headers["Retry-After"]
    finally:
        stop.set()
        for thread in burners:
            thread.join()
    deadline = time.monotonic() + 30
    while media.load.load >= 0.3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    late = Candidate(None, None)
    try:
        await late.join(client, sid)
    finally:
        await late.close()
