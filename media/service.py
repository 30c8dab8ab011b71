"""The media side of this process: calls attached to interviews, and their runtime.

`MediaService.connect()` answers an interview's offer with a new
`WebRtcCall`, at most one per interview at a time, and attaches it to the
`Interview`, so that however the interview ends, the table closes its call
first. What outlives a call (conversation state, anomaly rules, the
recording) lives on the `Interview`; this service creates it on the first
call and finishes the recording once the interview is gone for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

from config import Config
from adapters.gemini import GeminiLlm
from engine.admission import AdmissionSettings, LoadMeter, Refusal
from engine.aio import cancel_and_wait
from engine.interview import Interview, InterviewerSettings, new_conversation
from engine.interviewer import fixed_phrases
from engine.ports import InterviewerLlm, RecordingAdmission
from engine.registry import InterviewTable
from engine.session import InterviewSession
from media.call import WebRtcCall
from media.metrics import FrameTotals, MediaMetrics
from media.queues import QueueLoad
from media.recorder import RecorderSettings, SessionRecorder
from media.runtime import MediaModels, MediaRuntime, load_models

__all__ = ["AlreadyConnected", "MediaService"]

log = logging.getLogger(__name__)

LOAD_SAMPLE_S = 0.5
SHUTDOWN_DRAIN_S = 2.0


class AlreadyConnected(Exception):
    """The interview already has a call (or is no longer live)."""


class MediaService:
    def __init__(
        self,
        config: Config,
        table: InterviewTable,
        metrics: MediaMetrics,
        *,
        models: MediaModels | None = None,
        recordings: RecordingAdmission | None = None,
    ) -> None:
        self._config = config
        self.metrics = metrics
        metrics.frame_counters(self._frame_totals)
        metrics.queue_loads(self._queue_loads)
        self._table = table
        self._recordings = recordings
        self.load = LoadMeter(
            AdmissionSettings(admit_below=config.admit_load, max_sessions=config.max_sessions),
            cores=len(os.sched_getaffinity(0)),
        )
        metrics.gauge("interview_load", "This process's load for admission: the larger of "
                      "CPU over its cores and the oldest queued item over 2 s", lambda: self.load.load)
        metrics.counter("interview_admissions_refused", "New connections answered 503: the "
                        "server was busy or held MAX_SESSIONS", lambda: self.load.refused)
        self._sampler: asyncio.Task[None] | None = None
        self._hurry = False
        self._models = models
        self._runtime: MediaRuntime | None = None
        self._loading = asyncio.Lock()
        self._warming: asyncio.Task[int] | None = None  # the voice's fixed phrases (offline)
        self._finishing: set[asyncio.Task[object]] = set()
        # Finishing a recording file after its interview was forgotten.
        self._finishing_recorders: set[SessionRecorder] = set()
        table.on_forget.append(self._forget)
        self._llm: InterviewerLlm | None = None
        if config.interviewer and config.gemini_api_key:
            self._llm = GeminiLlm(
                config.gemini_api_key,
                config.gemini_model,
                base_url=config.gemini_base_url,
                first_token_timeout_s=config.llm_timeout_s,
            )
        self._interviewer = InterviewerSettings(
            name=config.interviewer_name,
            greeting=config.interviewer_greeting,
            max_minutes=config.interview_max_minutes,
        )

    def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample_load(), name="load-sampler")

    def hurry(self) -> None:
        """Shutting down: calls drain briefly, so the rows, the reports and the
        recordings are all final inside a container's stop timeout (10 s)."""
        self._hurry = True
        if self._warming is not None:
            self._warming.cancel()  # phrases for interviews that will not come
        if self._runtime is not None:
            self._runtime.drain_s = SHUTDOWN_DRAIN_S

    def refusal(self, session: InterviewSession) -> Refusal | None:
        """Why a call for `session` may not be set up now (503), or None."""
        calls = sum(1 for i in self._table.all() if i.has_call)
        return self.load.refusal(calls, continuing=session.start_time is not None)

    async def _sample_load(self) -> None:
        while True:
            oldest = max((q.oldest_s for q in self._queue_loads().values()), default=0.0)
            self.load.sample(time.monotonic(), time.process_time(), oldest)
            await asyncio.sleep(LOAD_SAMPLE_S)

    def live(self, session_id: uuid.UUID) -> WebRtcCall | None:
        """The interview's current call, if one is connected."""
        interview = self._table.interview(session_id)
        call = None if interview is None else interview.call
        return call if isinstance(call, WebRtcCall) else None

    def __len__(self) -> int:
        return sum(1 for i in self._table.all() if i.has_call)

    async def connect(self, session: InterviewSession, offer_sdp: str) -> str:
        """Answer the interview's offer; raise AlreadyConnected or SignalingError."""
        interview = self._table.interview(session.session_id)
        if interview is None or not interview.is_live or interview.has_call:
            raise AlreadyConnected(f"session {session.session_id} already has a live connection")
        interview.connecting = True  # reserved while models load and we answer
        call: WebRtcCall | None = None
        try:
            runtime = await self._ensure_runtime()
            self._prepare(interview)
            call = WebRtcCall(
                interview,
                runtime,
                recorder=self._recorder(interview, runtime),
                on_gone=lambda reason, rejoinable: self._gone(interview, reason, rejoinable),
            )
            answer = await call.answer(offer_sdp)
            if not interview.is_live:
                raise AlreadyConnected(f"session {session.session_id} ended while connecting")
        except BaseException:
            interview.connecting = False
            if call is not None:
                await call.close()
            if interview.is_live and interview.record.start_time is not None:
                # A rejoin that failed: parked again (its window restarts),
                # not left live without a peer.
                self._table.end_soon(interview.session_id, rejoinable=True)
            raise
        interview.attach(call)
        return answer

    async def close(self) -> None:
        await cancel_and_wait(self._sampler)
        for interview in self._table.all():  # none is left after a clean end_all()
            if interview.call is not None:
                await interview.call.close()
                interview.detach()
            self._forget(interview)
        if self._finishing:
            await asyncio.wait(self._finishing)
        await cancel_and_wait(self._warming)
        if self._runtime is not None:
            self._runtime.shutdown()
        if isinstance(self._llm, GeminiLlm):
            await self._llm.aclose()

    def _calls(self) -> list[WebRtcCall]:
        # Closing calls too (their interview is ending): their backlog still counts.
        return [i.call for i in self._table.all() if isinstance(i.call, WebRtcCall)]

    def _frame_totals(self) -> list[FrameTotals]:
        # Closing calls too, until their counts have moved to the closed totals:
        # a counter must never go down.
        totals = [call.frame_totals() for call in self._calls() if not call.totals_closed]
        totals += [FrameTotals(recording_dropped=r.frames_dropped) for r in self._recorders()]
        return totals

    def _recorders(self) -> list[SessionRecorder]:
        return [i.recording for i in self._table.all() if isinstance(i.recording, SessionRecorder)]

    def _queue_loads(self) -> dict[str, QueueLoad]:
        per_kind: dict[str, list[QueueLoad]] = {"audio_frames": [], "speech_pieces": []}
        for call in self._calls():
            for name, load in call.queue_loads().items():
                per_kind[name].append(load)
        recorders = [*self._recorders(), *self._finishing_recorders]
        per_kind["recording_frames"] = [r.queue_load() for r in recorders]
        loads = {name: QueueLoad.combine(found) for name, found in per_kind.items()}
        if self._runtime is not None:
            loads.update(self._runtime.job_loads())
        return loads

    def _prepare(self, interview: Interview) -> None:
        """What outlives a call, made on the interview's first call."""
        if self._config.interviewer and interview.conversation is None:
            state = new_conversation(interview.record, self._interviewer, self._llm)
            saved = interview.record.interviewer_state
            if saved is not None:  # continued from another node's checkpoint
                state.restore(saved, asyncio.get_running_loop().time())
            interview.conversation = state

    def _recorder(self, interview: Interview, runtime: MediaRuntime) -> SessionRecorder | None:
        """One recording per interview, continued across rejoins."""
        if not self._config.recording:
            return None
        if not isinstance(interview.recording, SessionRecorder):
            session_id = interview.session_id
            admission = self._recordings
            if admission is not None and not admission.admit_recording(
                    f"session {session_id}'s recording"):
                return None
            settings = RecorderSettings(max_fps=self._config.record_fps)
            interview.recording = SessionRecorder(
                runtime.layout.recording(session_id), settings, name=f"rec-{str(session_id)[:8]}",
                clock=interview.record.clock,
            )
            interview.record.recording_url = runtime.urls.recording(session_id)
        return interview.recording

    def _forget(self, interview: Interview) -> None:
        """The interview is gone for good: finish its recording in the background."""
        recorder, interview.recording = interview.recording, None
        if not isinstance(recorder, SessionRecorder):
            return
        self.metrics.closed.recording_dropped += recorder.frames_dropped
        task = asyncio.get_running_loop().create_task(
            recorder.close(), name=f"finish-recording-{interview.session_id}"
        )
        self._finishing.add(task)
        self._finishing_recorders.add(recorder)
        task.add_done_callback(self._finishing.discard)
        task.add_done_callback(lambda _: self._finishing_recorders.discard(recorder))

    async def _ensure_runtime(self) -> MediaRuntime:
        async with self._loading:
            if self._runtime is None:
                models = self._models
                if models is None:
                    loop = asyncio.get_running_loop()
                    models = await loop.run_in_executor(None, load_models, self._config)
                self._runtime = MediaRuntime.from_config(self._config, models, self.metrics)
                if self._hurry:
                    self._runtime.drain_s = SHUTDOWN_DRAIN_S
                if self._config.interviewer and self._llm is None and not self._hurry:
                    # The offline engine's acknowledgements and the like open
                    # most replies: synthesized now, they are not on the turn.
                    self._warming = asyncio.create_task(
                        self._runtime.warm_voice(fixed_phrases()), name="voice-warm-up")
            return self._runtime

    def _gone(self, interview: Interview, reason: str, rejoinable: bool) -> None:
        log.info("session %s: %s; ending it", interview.session_id, reason)
        self._table.end_soon(interview.session_id, rejoinable=rejoinable)
