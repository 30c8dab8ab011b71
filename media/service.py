"""Live media for every session of this process: models, executors, peers.

`MediaService.connect()` answers a session's offer with a new `LiveMedia`,
at most one per session, and registers its closing with the session registry
so that however the session ends, its media is closed first. Models load on
the first connection, off the loop, and are shared by every session.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

from config import Config
from engine.anomaly import AnomalyRules, AnomalySettings
from engine.conversation import InterviewMemory, TurnSettings
from adapters.detectors import load_detector
from adapters.gemini import GeminiLlm
from adapters.silero import SileroVadModel
from adapters.tts import load_synthesizer
from adapters.whisper import WhisperSettings, WhisperTranscriber, resolve_asr_model
from engine.interviewer import (
    GeminiInterviewer,
    InterviewerEngine,
    InterviewPlan,
    StructuredInterviewer,
    default_plan,
)
from engine.ports import InterviewerLlm
from engine.registry import SessionRegistry
from engine.session import InterviewSession, utc_now
from media.live import LiveMedia, MediaModels, MediaRuntime
from media.metrics import FrameTotals, MediaMetrics
from media.queues import MeteredExecutor, QueueLoad
from media.recorder import RecorderSettings, SessionRecorder

__all__ = ["AlreadyConnected", "MediaService", "load_models"]

log = logging.getLogger(__name__)


class AlreadyConnected(Exception):
    """The session already has a live peer."""


def load_models(config: Config) -> MediaModels:
    """Load the detector, Whisper, the VAD and the voice (blocking: seconds)."""
    model, label = resolve_asr_model(config.asr_model, config.data_dir / "models")
    return MediaModels(
        detector=load_detector(config.detector_kind, config.detector_model),
        transcriber=WhisperTranscriber(
            model,
            WhisperSettings(cpu_threads=config.asr_threads, num_workers=config.asr_workers),
        ),
        vad_model=SileroVadModel(),
        asr_model=label,
        synthesizer=load_synthesizer(config.tts) if config.interviewer else None,
    )


class MediaService:
    def __init__(
        self,
        config: Config,
        registry: SessionRegistry,
        evidence_url: Callable[[uuid.UUID, str], str],
        recording_url: Callable[[uuid.UUID], str],
        metrics: MediaMetrics,
    ) -> None:
        self._config = config
        self.metrics = metrics
        metrics.frame_counters(self._frame_totals)
        metrics.queue_loads(self._queue_loads)
        self._registry = registry
        self._evidence_url = evidence_url
        self._recording_url = recording_url
        self._runtime: MediaRuntime | None = None
        self._loading = asyncio.Lock()
        self._live: dict[uuid.UUID, LiveMedia | None] = {}
        # Per interview, across rejoins; forgotten when the session is gone for good.
        self._interviews: dict[uuid.UUID, InterviewMemory] = {}
        self._recorders: dict[uuid.UUID, SessionRecorder] = {}
        self._rules: dict[uuid.UUID, AnomalyRules] = {}
        self._finishing: set[asyncio.Task[object]] = set()
        # Closing: still draining queued audio, or finishing a recording file.
        self._draining: set[LiveMedia] = set()
        self._finishing_recorders: set[SessionRecorder] = set()
        registry.on_forget.append(self._forget)
        self._llm: InterviewerLlm | None = None
        if config.interviewer and config.gemini_api_key:
            self._llm = GeminiLlm(
                config.gemini_api_key,
                config.gemini_model,
                base_url=config.gemini_base_url,
                first_token_timeout_s=config.llm_timeout_s,
            )

    def live(self, session_id: uuid.UUID) -> LiveMedia | None:
        return self._live.get(session_id)

    def __len__(self) -> int:
        return len(self._live)

    async def connect(self, session: InterviewSession, offer_sdp: str) -> str:
        """Answer `session`'s offer; raise AlreadyConnected or SignalingError."""
        session_id = session.session_id
        if session_id in self._live:
            raise AlreadyConnected(f"session {session_id} already has a live connection")
        self._live[session_id] = None  # reserved while we load and answer
        try:
            runtime = await self._ensure_runtime()
            media = LiveMedia(
                session,
                runtime,
                interview=self._interview(session) if self._config.interviewer else None,
                recorder=self._recorder(session) if self._config.recording else None,
                # An episode in progress when the connection dropped is not recorded twice.
                rules=self._rules.setdefault(
                    session_id, AnomalyRules(AnomalySettings(device_labels=self._config.device_labels))
                ),
                on_gone=lambda reason, rejoinable: self._gone(session_id, reason, rejoinable),
                evidence_url=lambda name: self._evidence_url(session_id, name),
            )
            self._live[session_id] = media
            answer = await media.answer(offer_sdp)
        except BaseException:
            media_or_none = self._live.pop(session_id, None)
            if media_or_none is not None:
                await media_or_none.close()
            raise
        self._registry.add_closer(session_id, lambda: self._close(session_id))
        session.start_time = session.start_time or utc_now()
        session.touch()
        return answer

    async def close(self) -> None:
        for session_id in list(self._live):
            await self._close(session_id)
        for session_id in list(self._recorders):
            self._forget(session_id)
        if self._finishing:
            await asyncio.wait(self._finishing)
        if self._runtime is not None:
            self._runtime.shutdown()
        if isinstance(self._llm, GeminiLlm):
            await self._llm.aclose()

    def _frame_totals(self) -> list[FrameTotals]:
        # Closing sessions too, until their counts have moved to the closed totals:
        # a counter must never go down.
        totals = [media.frame_totals() for media in [*self._live.values(), *self._draining]
                  if media is not None and not media.totals_closed]
        totals += [FrameTotals(recording_dropped=r.frames_dropped) for r in self._recorders.values()]
        return totals

    def _queue_loads(self) -> dict[str, QueueLoad]:
        per_kind: dict[str, list[QueueLoad]] = {"audio_frames": [], "speech_pieces": []}
        for media in [*self._live.values(), *self._draining]:
            for name, load in ({} if media is None else media.queue_loads()).items():
                per_kind[name].append(load)
        recorders = [*self._recorders.values(), *self._finishing_recorders]
        per_kind["recording_frames"] = [r.queue_load() for r in recorders]
        loads = {name: QueueLoad.combine(found) for name, found in per_kind.items()}
        if self._runtime is not None:
            loads.update(self._runtime.job_loads())
        return loads

    def recording_path(self, session_id: uuid.UUID) -> Path:
        return self._config.data_dir / "recordings" / f"{session_id}.webm"

    def _recorder(self, session: InterviewSession) -> SessionRecorder:
        """One recording per interview, continued across rejoins."""
        recorder = self._recorders.get(session.session_id)
        if recorder is None:
            path = self.recording_path(session.session_id)
            settings = RecorderSettings(max_fps=self._config.record_fps)
            recorder = SessionRecorder(path, settings, name=f"rec-{str(session.session_id)[:8]}")
            self._recorders[session.session_id] = recorder
            session.recording_url = self._recording_url(session.session_id)
        return recorder

    def _forget(self, session_id: uuid.UUID) -> None:
        """The session is gone for good: finish its recording in the background."""
        self._interviews.pop(session_id, None)
        self._rules.pop(session_id, None)
        recorder = self._recorders.pop(session_id, None)
        if recorder is not None:
            self.metrics.closed.recording_dropped += recorder.frames_dropped
            task = asyncio.get_running_loop().create_task(
                recorder.close(), name=f"finish-recording-{session_id}"
            )
            self._finishing.add(task)
            self._finishing_recorders.add(recorder)
            task.add_done_callback(self._finishing.discard)
            task.add_done_callback(lambda _: self._finishing_recorders.discard(recorder))

    def _interview(self, session: InterviewSession) -> InterviewMemory:
        memory = self._interviews.get(session.session_id)
        if memory is None:
            memory = InterviewMemory(self._engine(session))
            self._interviews[session.session_id] = memory
        return memory

    def _engine(self, session: InterviewSession) -> InterviewerEngine:
        config = self._config
        options = {
            "interviewer_name": config.interviewer_name,
            "greeting": config.interviewer_greeting,
            "max_minutes": config.interview_max_minutes,
            "resume_text": session.resume_text,
        }
        if session.questions:
            plan = InterviewPlan(session.job_role, tuple(session.questions), **options)  # type: ignore[arg-type]
        else:
            plan = default_plan(session.job_role, **options)
        structured = StructuredInterviewer(plan)
        if self._llm is None:
            return structured
        return GeminiInterviewer(structured, self._llm)

    async def _ensure_runtime(self) -> MediaRuntime:
        async with self._loading:
            if self._runtime is None:
                c = self._config
                loop = asyncio.get_running_loop()
                models = await loop.run_in_executor(None, load_models, c)
                self._runtime = MediaRuntime(
                    models=models,
                    data_dir=c.data_dir,
                    ice_servers=c.ice_servers,
                    detect_fps=c.detect_fps,
                    keepalive_timeout_s=c.keepalive_timeout_s,
                    metrics=self.metrics,
                    asr_executor=MeteredExecutor(c.asr_workers, "asr"),
                    detect_executor=MeteredExecutor(c.detect_workers, "detect"),
                    turn_settings=TurnSettings(
                        end_of_turn_s=c.end_of_turn_s,
                        nudge_s=c.nudge_s,
                        max_minutes=c.interview_max_minutes,
                    ),
                )
            return self._runtime

    def _gone(self, session_id: uuid.UUID, reason: str, rejoinable: bool) -> None:
        log.info("session %s: %s; ending it", session_id, reason)
        self._registry.end_soon(session_id, rejoinable=rejoinable)

    async def _close(self, session_id: uuid.UUID) -> None:
        media = self._live.pop(session_id, None)
        if media is not None:
            self._draining.add(media)  # its backlog still counts in /metrics
            try:
                await media.close()
            finally:
                self._draining.discard(media)
