"""One scripted candidate: create a session, connect, follow the scenario, leave.

The candidate answers when the server's `state` says `listening` (the
interviewer paces the conversation), so each answer is a clip started on
demand. Because it knows exactly what it sent and when, it measures what the
server made of it: connect time, last voiced packet sent → final transcript
received, last voiced packet sent → first interviewer audio heard, the
transcript's word error rate, and the anomalies announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

import testing
from loadtest.media import MediaLibrary
from loadtest.scenarios import SCENARIOS, Scenario
from testing import CameraTrack, Event, EventLog, InterviewerEar, MicrophoneTrack, SpeechClip, Utterance, wer

__all__ = ["AnswerResult", "Candidate", "CandidatePlan", "CandidateResult", "Progress"]

THINK_S = 0.7  # a candidate's pause before answering
LEAVE_TIMEOUT_S = 5.0
WELCOME_BACK_TIMEOUT_S = 20.0
SAY_MARGIN_S = 5.0
PING_S = 2.0  # as the browser client does

# One connection; a rejoin opens another, sharing the candidate's log and ear.
Peer = testing.Candidate[MicrophoneTrack, CameraTrack]

Progress = Callable[[str, int, str], None]  # (event, candidate index, detail)
# The structured interviewer's nudges (engine/interviewer.py), to count them.
_NUDGES = ("whenever you're ready", "are you still there")


@dataclass(frozen=True)
class CandidatePlan:
    index: int
    scenario: str
    start_offset_s: float  # from the run's start (the ramp)
    duration_s: float  # connected time, from the first connection
    settle_s: float  # how long to wait for the reply to the last answer
    server: str
    api_key: str | None = field(default=None, repr=False)
    job_role: str = "Backend engineer"


@dataclass
class AnswerResult:
    clip: str
    reference: str
    transcript: str
    wer: float | None
    transcript_latency_s: float | None  # last voiced packet sent -> last transcript piece
    turn_latency_s: float | None  # last voiced packet sent -> interviewer's voice heard
    said_at_s: float  # from the first connection


@dataclass
class CandidateResult:
    index: int
    scenario: str
    session_id: str | None = None
    # Which node holds the session: the `X-Node` of the create's answer (of the
    # first offer's when the create had none); where the offers were answered;
    # the node that refused the candidate with a 503 (draining or full).
    node: str | None = None
    offer_nodes: list[str] = field(default_factory=list)
    refused_by: str | None = None
    error: str | None = None
    create_s: float | None = None
    connect_s: float | None = None
    rejoin_connect_s: float | None = None
    rejoin_busy_retries: int = 0
    welcome_back: bool | None = None
    answers: list[AnswerResult] = field(default_factory=list)
    transcripts: int = 0
    transcripts_unprompted: int = 0  # heard while the candidate said nothing
    anomalies_channel: list[str] = field(default_factory=list)
    interviewer_lines: int = 0
    nudges: int = 0
    interview_ended: bool = False  # the server's state reached "ended"
    active_s: float = 0.0  # seconds connected, over every connection
    audio_packets_sent: int = 0
    video_packets_sent: int = 0
    interviewer_frames: int = 0
    packets_sent_late: int = 0  # > 40 ms behind schedule: the client was busy
    max_send_lag_s: float = 0.0


class Candidate:
    def __init__(
        self,
        plan: CandidatePlan,
        library: MediaLibrary,
        http: aiohttp.ClientSession,
        progress: Progress,
        t0: float,
    ) -> None:
        self.plan = plan
        self._start_at = t0 + plan.start_offset_s  # wall clock, shared by every worker
        self.scenario: Scenario = SCENARIOS[plan.scenario]
        self._library = library
        self._http = http
        self._progress = progress
        self.log = EventLog()
        self.ear = InterviewerEar()
        self.result = CandidateResult(plan.index, plan.scenario)
        self._peers: list[Peer] = []
        self._utterances: list[Utterance] = []
        self._token = ""
        self._first_connected = 0.0
        self._camera_task: asyncio.Task[None] | None = None
        self._camera_role = self.scenario.camera

    async def run(self) -> CandidateResult:
        """Play the scenario; never raises (a failure is recorded in `error`)."""
        await asyncio.sleep(max(0.0, self._start_at - time.time()))
        try:
            await self._create()
            await self._connect()
            await self._play()
            await self._leave()
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on for the others
            self.result.error = f"{type(exc).__name__}: {exc}"
            self._progress("error", self.plan.index, "".join(traceback.format_exception_only(exc)))
        finally:
            await self._close_all()
            self._summarise()
        self._progress("finished", self.plan.index, self.result.error or "")
        return self.result

    # -- session and connections ------------------------------------------------

    def _headers(self, secret: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    async def _create(self) -> None:
        started = time.monotonic()
        async with self._http.post(
            f"{self.plan.server}/sessions", json={"job_role": self.plan.job_role},
            headers=self._headers(self.plan.api_key),
        ) as resp:
            node = resp.headers.get("X-Node")
            if resp.status == 503:
                self.result.refused_by = node
            if resp.status != 201:
                raise RuntimeError(f"create: HTTP {resp.status} {(await resp.text())[:200]}")
            body = await resp.json()
        self.result.node = node
        self.result.create_s = time.monotonic() - started
        self.result.session_id = body["session_id"]
        self._token = body["token"]
        self._progress("created", self.plan.index, body["session_id"])

    async def _connect(self, *, rejoin: bool = False) -> float:
        library = self._library
        camera = CameraTrack(library.video[self._camera_role])
        peer = Peer(MicrophoneTrack(library.silence), camera, log=self.log, ear=self.ear)
        self._peers.append(peer)
        url = f"{self.plan.server}/sessions/{self.result.session_id}/offer"
        try:
            connect_s = await peer.connect(self._http, url, headers=self._headers(self._token),
                                           rejoin=rejoin, ping_s=PING_S)
        finally:
            self._note_offer_node(peer)
        if len(self._peers) == 1:
            self.result.connect_s = connect_s
            self._first_connected = time.monotonic()
            self._schedule_camera_switch()
        self._progress("connected", self.plan.index, f"{connect_s:.2f}")
        return connect_s

    def _note_offer_node(self, peer: Peer) -> None:
        if peer.answered_by is not None:
            self.result.offer_nodes.append(peer.answered_by)
            self.result.node = self.result.node or peer.answered_by
        if peer.answer_status == 503 and self.result.refused_by is None:
            self.result.refused_by = peer.answered_by

    def _schedule_camera_switch(self) -> None:
        switch_to = self.scenario.switch_to
        if switch_to is None:
            return
        async def switch() -> None:
            await asyncio.sleep(self.scenario.switch_at * self.plan.duration_s)
            self._camera_role = switch_to  # a rejoin's new camera shows it too
            self._peer.video.show(self._library.video[switch_to])
        self._camera_task = asyncio.get_running_loop().create_task(switch(), name="camera-switch")

    @property
    def _peer(self) -> Peer:
        return self._peers[-1]

    # -- the scenario ------------------------------------------------------------

    async def _play(self) -> None:
        end = self._first_connected + self.plan.duration_s
        since = 0  # events of this connection start here
        if self.scenario.drop_at is not None:
            await self._converse(self._first_connected + self.scenario.drop_at * self.plan.duration_s,
                                 since)
            since = await self._drop_and_rejoin()
        await self._converse(end, since)

    async def _converse(self, until: float, since: int) -> None:
        if self.scenario.answers:
            await self._answer_until(until, since)
        else:
            await self.log.wait_for(_ended, since=since, timeout=until - time.monotonic())

    async def _answer_until(self, until: float, cursor: int) -> None:
        while (left := until - time.monotonic()) > 0:
            index = await self.log.wait_for(_listening_or_ended, since=cursor, timeout=left)
            if index is None or _ended(self.log.events[index]):
                break
            cursor = index + 1
            await asyncio.sleep(THINK_S)
            if not await self._say(self._library.clip(len(self._utterances))):
                break
        await self._await_last_reply()

    async def _say(self, clip: SpeechClip) -> bool:
        """Play one answer; False if the connection went away under it."""
        utterance = self._peer.audio.say(clip)
        self._utterances.append(utterance)
        # The sender stops pulling packets if the server closes the connection.
        await asyncio.wait([utterance.done], timeout=clip.clip.duration_s + SAY_MARGIN_S)
        if not utterance.done.done() or utterance.done.cancelled():
            return False
        self._progress("answered", self.plan.index, clip.name)
        return True

    async def _await_last_reply(self) -> None:
        """Give the reply to the last answer `settle_s` to be heard."""
        last = self._utterances[-1] if self._utterances else None
        if last is not None and last.voiced_end_at is not None:
            await self.ear.wait_onset_after(last.voiced_end_at, self.plan.settle_s)

    async def _drop_and_rejoin(self) -> int:
        """The network drops: close the peer with no goodbye, then offer anew.
        Returns the index of the new connection's first event."""
        await self._peer.close()
        self._progress("dropped", self.plan.index, "")
        since = len(self.log.events)
        self.result.rejoin_connect_s = await self._connect(rejoin=True)
        self.result.rejoin_busy_retries = self._peer.busy_retries
        found = await self.log.wait_for(_welcome_back, since=since, timeout=WELCOME_BACK_TIMEOUT_S)
        self.result.welcome_back = found is not None
        return since

    async def _leave(self) -> None:
        peer = self._peer
        if self.scenario.leave == "end" and peer.send({"type": "end"}):
            # The server ends the session and closes the connection.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(peer.lost.wait(), LEAVE_TIMEOUT_S)
        await peer.close()

    async def _close_all(self) -> None:
        if self._camera_task is not None:
            self._camera_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._camera_task
        for peer in self._peers:
            await peer.close()

    # -- what was measured -----------------------------------------------------

    def _summarise(self) -> None:
        r = self.result
        r.answers = [self._answer(i, u) for i, u in enumerate(self._utterances)
                     if u.voiced_end_at is not None]
        transcripts = self.log.of("transcript")
        r.transcripts = len(transcripts)
        r.transcripts_unprompted = 0 if self._utterances else len(transcripts)
        r.anomalies_channel = [str(e.body.get("anomaly")) for e in self.log.of("anomaly")]
        lines = [str(e.body.get("text", "")) for e in self.log.of("interviewer")]
        r.interviewer_lines = len(lines)
        r.nudges = sum(any(n in line.lower() for n in _NUDGES) for line in lines)
        r.interview_ended = self.log.find(_ended) is not None
        r.active_s = sum((p.closed_at or time.monotonic()) - p.connected_at
                         for p in self._peers if p.connected_at is not None)
        r.audio_packets_sent = sum(p.audio.packets_sent for p in self._peers)
        r.video_packets_sent = sum(p.video.packets_sent for p in self._peers)
        r.interviewer_frames = self.ear.frames
        r.packets_sent_late = sum(p.audio.packets_late + p.video.packets_late
                                  for p in self._peers)
        r.max_send_lag_s = max((max(p.audio.max_lag_s, p.video.max_lag_s)
                                for p in self._peers), default=0.0)

    def _answer(self, index: int, utterance: Utterance) -> AnswerResult:
        assert utterance.voiced_end_at is not None and utterance.started_at is not None
        following = self._utterances[index + 1:]
        until = following[0].started_at if following and following[0].started_at else float("inf")
        pieces = [e for e in self.log.of("transcript") if utterance.started_at <= e.at < until]
        text = " ".join(str(e.body.get("text", "")).strip() for e in pieces).strip()
        onset = self.ear.onset_after(utterance.voiced_end_at)
        return AnswerResult(
            clip=utterance.clip.name,
            reference=utterance.clip.text,
            transcript=text,
            wer=round(wer(utterance.clip.text, text), 4),
            transcript_latency_s=_since(utterance.voiced_end_at, pieces[-1].at if pieces else None),
            turn_latency_s=_since(utterance.voiced_end_at, onset if onset and onset < until else None),
            said_at_s=round(utterance.started_at - self._first_connected, 3),
        )


def _since(start: float, end: float | None) -> float | None:
    return None if end is None else round(end - start, 4)


def _ended(event: Event) -> bool:
    return event.type == "state" and event.body.get("state") == "ended"


def _listening_or_ended(event: Event) -> bool:
    return event.type == "state" and event.body.get("state") in ("listening", "ended")


def _welcome_back(event: Event) -> bool:
    return event.type == "interviewer" and "welcome back" in str(event.body.get("text", "")).lower()
