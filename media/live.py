"""A session's live media: the peer, its tracks' pipelines, and their events.

`LiveMedia` is what a successful offer creates. It routes the candidate's
voice activity and transcripts to the `Conversation` (the AI interviewer,
which answers over an outgoing audio track), anomalies into the
`InterviewSession` and to the candidate's data channel, writes anomaly
evidence off the loop, and asks its owner to end the session (`on_gone`) when
the candidate leaves, ends, goes silent, or the interview is over.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from adapters.evidence import render_evidence
from engine.anomaly import Anomaly, AnomalyRules
from engine.conversation import Conversation, InterviewMemory, TurnMetrics, TurnSettings
from engine.ports import Detector, Synthesizer, Transcriber, VadModel
from engine.report import AnswerRecord, build_report, evaluate
from engine.session import InterviewSession, Turn
from engine.vad import VadSettings, VoiceActivityDetector
from media.audio_track import AudioTranscriber, Transcript
from media.metrics import FrameTotals, MediaMetrics
from media.peer import InterviewPeer
from media.queues import MeteredExecutor, QueueLoad
from media.recorder import SessionRecorder
from media.video_track import VideoAnalyzer
from media.voice_track import InterviewerTrack, InterviewerVoice

__all__ = ["LiveMedia", "MediaModels", "MediaRuntime", "evidence_path"]

log = logging.getLogger(__name__)


def _single(name: str) -> Callable[[], Executor]:
    return lambda: MeteredExecutor(1, name)


@dataclass(frozen=True)
class MediaModels:
    """Loaded once per process and shared by every session."""

    detector: Detector
    transcriber: Transcriber
    vad_model: VadModel
    asr_model: str  # the label recorded as `asr_model`
    synthesizer: Synthesizer | None = None


@dataclass
class MediaRuntime:
    """What every session's media shares: models, executors, settings."""

    models: MediaModels
    data_dir: Path
    ice_servers: tuple[dict[str, Any], ...] = ()
    detect_fps: float = 2.0
    keepalive_timeout_s: float = 8.0
    vad_settings: VadSettings = field(default_factory=VadSettings)
    turn_settings: TurnSettings = field(default_factory=TurnSettings)
    metrics: MediaMetrics = field(default_factory=MediaMetrics)
    detect_executor: Executor = field(default_factory=_single("detect"))
    asr_executor: Executor = field(default_factory=_single("asr"))
    vad_executor: Executor = field(default_factory=_single("vad"))
    tts_executor: Executor = field(default_factory=_single("tts"))
    file_executor: Executor = field(default_factory=_single("media-files"))

    def executors(self) -> dict[str, Executor]:
        return {"asr": self.asr_executor, "detect": self.detect_executor,
                "vad": self.vad_executor, "tts": self.tts_executor, "files": self.file_executor}

    def job_loads(self) -> dict[str, QueueLoad]:
        """Jobs waiting for each executor's threads (`<name>_jobs`)."""
        return {f"{name}_jobs": ex.load() for name, ex in self.executors().items()
                if isinstance(ex, MeteredExecutor)}

    def shutdown(self) -> None:
        for executor in self.executors().values():
            executor.shutdown(wait=False, cancel_futures=True)


class LiveMedia:
    def __init__(
        self,
        session: InterviewSession,
        runtime: MediaRuntime,
        *,
        interview: InterviewMemory | None,
        recorder: SessionRecorder | None,
        rules: AnomalyRules,
        on_gone: Callable[[str, bool], None],
        evidence_url: Callable[[str], str],
    ) -> None:
        self.session = session
        self._runtime = runtime
        self.totals_closed = False
        self._interview = interview
        self._recorder = recorder
        self._rules = rules
        self._on_gone = on_gone
        self._evidence_url = evidence_url
        self._name = f"session-{str(session.session_id)[:8]}"
        self.peer = InterviewPeer(
            name=self._name,
            ice_servers=runtime.ice_servers,
            keepalive_timeout_s=runtime.keepalive_timeout_s,
            on_track=self._start_track,
            on_message=self._handle_message,
            # A dropped connection may be rejoined within the grace window.
            on_gone=lambda reason: on_gone(reason, True),
            on_connected=self._start_conversation,
        )
        self.audio: AudioTranscriber | None = None
        self.video: VideoAnalyzer | None = None
        self.voice_track: InterviewerTrack | None = None
        self.voice: InterviewerVoice | None = None
        self.conversation: Conversation | None = None
        self._pieces: list[str] = []
        self._writes: set[asyncio.Future[None]] = set()
        self._closed = False
        session.asr_model = runtime.models.asr_model
        if interview is not None:
            engine = interview.engine
            session.llm_provider, session.llm_model = engine.provider, engine.model

    async def answer(self, sdp: str) -> str:
        return await self.peer.answer(sdp)

    async def close(self) -> None:
        """Stop the pipelines (finishing what was heard), write the report, close the peer."""
        if self._closed:
            return
        self._closed = True
        await self.peer.close()
        if self.video is not None:
            await self.video.close()
        if self.audio is not None:
            await self.audio.close()  # the last transcripts reach the conversation
        self._runtime.metrics.closed.add(self.frame_totals())
        self.totals_closed = True  # counted in `closed` from now on, not as live
        if self.conversation is not None:
            await self.conversation.close()
            await self._write_report(self.conversation)
        self._commit_user_turn()
        if self._writes:
            await asyncio.wait(self._writes, timeout=10)

    def queue_loads(self) -> dict[str, QueueLoad]:
        return {} if self.audio is None else self.audio.queue_loads()

    def frame_totals(self) -> FrameTotals:
        totals = FrameTotals()
        if self.audio is not None:
            stats = self.audio.stats
            totals.audio_in, totals.audio_dropped = stats.frames_in, stats.frames_dropped
            totals.pieces_dropped = stats.pieces_dropped
        if self.video is not None:
            v = self.video.stats
            totals.video_in, totals.video_analysed = v.frames_in, v.samples_analysed
            totals.video_dropped = v.samples_dropped
        return totals

    # -- tracks --------------------------------------------------------------------

    def _start_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.audio is None:
            self._start_audio(track)
        elif track.kind == "video" and self.video is None:
            self._start_video(track)
        else:
            log.warning("%s: ignoring extra %s track", self._name, track.kind)

    def _start_audio(self, track: MediaStreamTrack) -> None:
        runtime = self._runtime
        self.audio = AudioTranscriber(
            track,
            vad=VoiceActivityDetector(runtime.models.vad_model, runtime.vad_settings),
            transcriber=runtime.models.transcriber,
            vad_executor=runtime.vad_executor,
            asr_executor=runtime.asr_executor,
            on_transcript=self._handle_transcript,
            on_frame=self._candidate_audio,
            on_voice=self._handle_voice,
            name=self._name,
        )
        synthesizer = runtime.models.synthesizer
        if self._interview is not None and synthesizer is not None:
            # Answer on the candidate's own audio transceiver (sendrecv offers).
            recorder = self._recorder
            self.voice_track = InterviewerTrack(
                on_frame=None if recorder is None else recorder.add_interviewer_audio
            )
            self.peer.pc.addTrack(self.voice_track)
            self.voice = InterviewerVoice(
                self.voice_track, synthesizer, runtime.tts_executor,
                on_synthesized=runtime.metrics.tts_seconds.observe,
            )

    def _start_video(self, track: MediaStreamTrack) -> None:
        runtime = self._runtime
        self.video = VideoAnalyzer(
            track,
            detector=runtime.models.detector,
            executor=runtime.detect_executor,
            fps=runtime.detect_fps,
            rules=self._rules,
            on_anomalies=self._handle_anomalies,
            on_frame=self._candidate_video,
            on_sample=runtime.metrics.detect_seconds.observe,
            name=self._name,
        )

    def _candidate_audio(self, frame: av.AudioFrame) -> None:
        self.peer.seen()
        if self._recorder is not None:
            self._recorder.add_candidate_audio(frame)

    def _candidate_video(self, frame: av.VideoFrame) -> None:
        self.peer.seen()
        if self._recorder is not None:
            self._recorder.add_candidate_video(frame)

    # -- the interviewer ------------------------------------------------------------

    def _start_conversation(self) -> None:
        if self.conversation is not None or self._interview is None or self.voice is None:
            return
        self.conversation = Conversation(
            self._interview,
            self.voice,
            self.session,
            settings=self._runtime.turn_settings,
            notify=self.peer.send,
            on_finished=lambda: self._on_gone("the interview is over", False),
            on_turn=self._observe_turn,
        )
        self.conversation.start()

    def _observe_turn(self, turn: TurnMetrics) -> None:
        metrics = self._runtime.metrics
        if turn.first_audio_at is not None:
            metrics.turn_latency.observe(turn.first_audio_at - turn.last_voiced_at)
            metrics.reply_seconds.observe(turn.first_audio_at - turn.end_of_turn_at)
        if turn.first_sentence_at is not None:
            metrics.llm_first_sentence.observe(turn.first_sentence_at - turn.end_of_turn_at)

    def _handle_voice(self, active: bool) -> None:
        if self.conversation is not None:
            self.conversation.voice(active)

    def _handle_transcript(self, transcript: Transcript) -> None:
        if transcript.asr_s:
            self._runtime.metrics.asr_seconds.observe(transcript.asr_s)
            self._runtime.metrics.transcript_latency.observe(transcript.latency_s)
        if transcript.text:
            self.peer.send({"type": "transcript", "final": True, "text": transcript.text,
                            "start": round(transcript.start, 3), "end": round(transcript.end, 3)})
        if self.conversation is not None:
            self.conversation.transcript(
                transcript.text,
                utterance_done=transcript.utterance_done,
                latency_s=transcript.latency_s,
                speech_s=transcript.end - transcript.start,
            )
            return
        if transcript.text:
            self._pieces.append(transcript.text)
        if transcript.utterance_done:
            self._commit_user_turn()

    def _commit_user_turn(self) -> None:
        if self._pieces:
            self.session.add_turn("user", " ".join(self._pieces))
            self._pieces = []

    async def _write_report(self, conversation: Conversation) -> None:
        answers = [
            AnswerRecord(q.question, tuple(q.answers), q.speech_s)
            for _, q in sorted(conversation.questions.items())
        ]
        assert self._interview is not None
        engine = self._interview.engine
        evaluation = None
        llm = getattr(engine, "llm", None)
        if llm is not None and any(t.role == "user" for t in self.session.conversation_history):
            history = [Turn("assistant" if t.role == "assistant" else "user", t.content)
                       for t in self.session.conversation_history]
            evaluation = await evaluate(llm, self.session.job_role, history)
        self.session.interview_report = build_report(
            answers,
            self.session.anomalies_detected,
            candidate_talk_s=sum(a.speech_s for a in answers),
            interviewer_talk_s=self._interview.interviewer_audio_s,
            provider=engine.provider,
            model=engine.model,
            evaluation=evaluation,
        )
        errors = getattr(engine, "errors", None)
        if errors:
            self.session.extra_information["llm_errors"] = list(errors[-20:])
        self.session.touch()

    # -- anomalies and messages ---------------------------------------------------------

    def _handle_anomalies(self, anomalies: list[Anomaly], rgb: np.ndarray) -> None:
        for anomaly in anomalies:
            name = f"{anomaly.at:%Y%m%dT%H%M%S}-{anomaly.type}-{uuid.uuid4().hex[:6]}.jpg"
            record = anomaly.to_record()
            record["evidence_url"] = self._evidence_url(name)
            self.session.add_anomaly(record)
            self._runtime.metrics.anomalies.labels(anomaly.type).inc()
            # The record's own "type" names the anomaly; the message's names the event.
            self.peer.send({**record, "type": "anomaly", "anomaly": record["type"]})
            self._write_evidence(name, rgb, anomaly)
            log.info("%s: anomaly %s (%d)", self._name, anomaly.type, anomaly.count)

    def _write_evidence(self, name: str, rgb: np.ndarray, anomaly: Anomaly) -> None:
        path = evidence_path(self._runtime.data_dir, self.session.session_id, name)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._runtime.file_executor, _write_jpeg, path, rgb, anomaly)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    def _handle_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "end":
            self._on_gone("the candidate ended the interview", False)
        else:
            self.peer.send({"type": "error", "message": f"unknown message type {message['type']!r}"})


def evidence_path(data_dir: Path, session_id: uuid.UUID, name: str) -> Path:
    return data_dir / "evidence" / str(session_id) / name


def _write_jpeg(path: Path, rgb: np.ndarray, anomaly: Anomaly) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_evidence(rgb, anomaly.detections))
