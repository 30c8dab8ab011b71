"""Warm the server up before measuring: its models load on first use.

Without this, the first candidates' numbers would include loading Whisper,
the detector, the VAD and the voice. One throwaway candidate connects with
silence and a camera, waits until the interviewer's greeting is heard (the
voice has loaded and frames went through every pipeline), and ends; its
row is not counted.
"""

from __future__ import annotations

import time

import aiohttp

from loadtest.candidate import PING_S, Peer
from loadtest.media import MediaLibrary
from testing import CameraTrack, EventLog, InterviewerEar, MicrophoneTrack

__all__ = ["warm_up"]

STATE_TIMEOUT_S = 10.0  # a server with INTERVIEWER=0 never sends a state
VOICE_TIMEOUT_S = 120.0


async def warm_up(http: aiohttp.ClientSession, url: str, api_key: str | None,
                  library: MediaLibrary) -> float:
    """Seconds from the offer to the greeting heard (or to connected, with no interviewer)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with http.post(f"{url}/sessions", json={"job_role": "Load test warm-up"},
                         headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"warm-up: creating a session gave HTTP {resp.status}")
        session = await resp.json()
    log, ear = EventLog(), InterviewerEar()
    peer = Peer(MicrophoneTrack(library.silence), CameraTrack(library.video["one_person"]),
                log=log, ear=ear)
    started = time.monotonic()
    try:
        await peer.connect(http, f"{url}/sessions/{session['session_id']}/offer",
                           headers={"Authorization": f"Bearer {session['token']}"}, ping_s=PING_S)
        if await log.wait_for(lambda e: e.type == "state", timeout=STATE_TIMEOUT_S) is not None:
            await ear.wait_onset_after(started, VOICE_TIMEOUT_S)
        return time.monotonic() - started
    finally:
        async with http.post(f"{url}/sessions/{session['session_id']}/end", headers=headers):
            pass
        await peer.close()
