"""One connection of a candidate: the peer, its tracks' pipelines, their events.

A `WebRtcCall` is what a successful offer creates, attached to its
`Interview` (a rejoin is a new call on the same interview). It routes the
candidate's voice activity and transcripts to the `Conversation` (the AI
interviewer, which answers over an outgoing audio track), anomalies into the
interview and to the candidate's data channel, writes anomaly evidence off
the loop, and asks its owner to end the interview (`on_gone`) when the
candidate leaves, ends, goes silent, or the interview is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from adapters.evidence import render_evidence
from engine.aio import cancel_and_wait
from engine.anomaly import Anomaly
from engine.conversation import Conversation, TurnMetrics
from engine.events import AnomalyEvent, ClientMessage, EndRequest, TranscriptEvent
from engine.interview import Interview
from engine.vad import VoiceActivityDetector
from engine.turns import TurnEstimate, TurnProbe
from media.audio_track import AudioTranscriber, Transcript
from media.metrics import FrameTotals
from media.peer import InterviewPeer
from media.queues import QueueLoad
from media.recorder import SessionRecorder
from media.runtime import MediaRuntime
from media.video_track import VideoAnalyzer
from media.voice_track import InterviewerTrack, InterviewerVoice

__all__ = ["WebRtcCall"]

log = logging.getLogger(__name__)


class WebRtcCall:
    def __init__(
        self,
        interview: Interview,
        runtime: MediaRuntime,
        *,
        recorder: SessionRecorder | None,
        on_gone: Callable[[str, bool], None],
    ) -> None:
        self.interview = interview
        self.session = interview.record
        self._runtime = runtime
        self.totals_closed = False
        self._recorder = recorder
        self._on_gone = on_gone
        self._name = f"session-{str(interview.session_id)[:8]}"
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
        self._heard_at: float | None = None  # when the pieces were heard (loop time)
        self._heard_until: float | None = None
        self._drains: list[asyncio.Task[None]] = []
        self.extra_track_frames = 0
        self._writes: set[asyncio.Future[None]] = set()
        self._closed = False
        self.session.asr_model = runtime.models.asr_model
        if interview.conversation is not None:
            engine = interview.conversation.engine
            self.session.llm_provider, self.session.llm_model = engine.provider, engine.model

    async def answer(self, sdp: str) -> str:
        return await self.peer.answer(sdp)

    async def close(self) -> None:
        """Stop the pipelines (finishing what was heard), write the report, close the peer."""
        if self._closed:
            return
        self._closed = True
        await self.peer.close()
        await cancel_and_wait(*self._drains)
        if self.video is not None:
            await self.video.close()
        if self.audio is not None:
            # The last transcripts reach the conversation.
            await self.audio.close(drain_timeout_s=self._runtime.drain_s)
        self._runtime.metrics.closed.add(self.frame_totals())
        self.totals_closed = True  # counted in `closed` from now on, not as live
        if self.conversation is not None:
            await self.conversation.close()
            self.interview.finish()
        self._commit_user_turn()
        if self._writes:
            await asyncio.wait(self._writes, timeout=self._runtime.drain_s)

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
            totals.video_unchanged = v.samples_unchanged
            totals.video_refused = v.frames_refused
        if self._recorder is not None:
            totals.recording_cpu_s = self._recorder.stats.encode_cpu_seconds
        totals.extra_track_frames = self.extra_track_frames
        totals.messages_refused = self.peer.messages_refused
        totals.messages_oversized = self.peer.messages_oversized
        totals.events_dropped = self.peer.messages_dropped
        return totals

    # -- tracks --------------------------------------------------------------------

    def _start_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.audio is None:
            self._start_audio(track)
        elif track.kind == "video" and self.video is None:
            self._start_video(track)
        else:
            # Read and discard: aiortc queues a track's frames without bound
            # until somebody reads them.
            log.warning("%s: discarding extra %s track", self._name, track.kind)
            self._drains.append(asyncio.create_task(
                self._discard(track), name=f"{self._name}-discard-{track.kind}"))

    async def _discard(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.extra_track_frames += 1

    def _start_audio(self, track: MediaStreamTrack) -> None:
        runtime = self._runtime
        self.audio = AudioTranscriber(
            track,
            vad=VoiceActivityDetector(runtime.models.vad_model, runtime.vad_settings),
            transcriber=runtime.models.transcriber,
            draft_transcriber=runtime.models.draft_transcriber,
            vad_executor=runtime.vad_executor,
            asr_executor=runtime.asr_executor,
            on_transcript=self._handle_transcript,
            on_frame=self._candidate_audio,
            on_voice=self._handle_voice,
            turn_probe=self._turn_probe(),
            on_turn_estimate=self._handle_turn_estimate,
            turn_executor=runtime.turn_executor,
            name=self._name,
        )
        synthesizer = runtime.models.synthesizer
        if self.interview.conversation is not None and synthesizer is not None:
            # Answer on the candidate's own audio transceiver (sendrecv offers).
            self.voice_track = InterviewerTrack(on_frame=self._interviewer_audio)
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
            gate_executor=runtime.gate_executor,
            fps=runtime.detect_fps,
            rules=self.interview.rules,
            on_anomalies=self._handle_anomalies,
            on_frame=self._candidate_video,
            on_sample=runtime.metrics.detect_seconds.observe,
            gate=runtime.detect_gate,
            name=self._name,
        )

    def _candidate_audio(self, frame: av.AudioFrame) -> None:
        self.peer.seen()
        if self._recorder is not None:
            self._recorder.add_candidate_audio(frame)  # starts the clock
        else:
            self.session.clock.start(time.monotonic())

    def _candidate_video(self, frame: av.VideoFrame) -> None:
        self.peer.seen()
        if self._recorder is not None:
            self._recorder.add_candidate_video(frame)
        else:
            self.session.clock.start(time.monotonic())

    def _interviewer_audio(self, frame: av.AudioFrame) -> None:
        """Called as each frame of the interviewer's voice is played out."""
        if self._recorder is not None:
            self._recorder.add_interviewer_audio(frame)
        else:
            self.session.clock.start(time.monotonic())

    # -- the interviewer ------------------------------------------------------------

    def _start_conversation(self) -> None:
        if self.conversation is not None or self.interview.conversation is None:
            return
        if self.voice is None:
            return
        self.conversation = Conversation(
            self.interview,
            self.voice,
            settings=self._runtime.turn_settings,
            notify=self.peer.send,
            on_finished=lambda: self._on_gone("the interview is over", False),
            on_turn=self._observe_turn,
            on_answer_taken=self._commit_taken_answer,
        )
        self.conversation.start()

    def _commit_taken_answer(self, span: tuple[float, float]) -> None:
        # The turn is over: the paused utterance is final now, not after the
        # VAD's end silence (its speculative transcript is usually done).
        if self.audio is not None:
            self.audio.end_utterance(span[1])

    def _observe_turn(self, turn: TurnMetrics) -> None:
        metrics = self._runtime.metrics
        if turn.decision is not None:
            metrics.turn_decisions.labels(turn.decision.rule).inc()
            metrics.turn_silence.observe(turn.decision.silence_s)
            self.session.add_turn_decision(turn.as_dict())
            decision = turn.decision
            log.info("%s: turn ended by rule %s after %.2f s of silence (P(complete) %s, cues %s)",
                     self._name, decision.rule, decision.silence_s,
                     "-" if decision.probability is None else f"{decision.probability:.2f}",
                     ",".join(decision.cues) or "-")
        if turn.first_audio_at is not None:
            metrics.turn_latency.observe(turn.first_audio_at - turn.last_voiced_at)
            metrics.reply_seconds.observe(turn.first_audio_at - turn.end_of_turn_at)
        if turn.first_sentence_at is not None:
            metrics.llm_first_sentence.observe(turn.first_sentence_at - turn.end_of_turn_at)

    def _turn_probe(self) -> TurnProbe | None:
        runtime = self._runtime
        learned = runtime.turn_settings.end_of_turn
        model = runtime.models.turn_model
        if learned is None or model is None or self.interview.conversation is None:
            return None
        return TurnProbe(model, learned)

    def _handle_voice(self, active: bool) -> None:
        if self.conversation is not None:
            self.conversation.voice(active)

    def _handle_turn_estimate(self, estimate: TurnEstimate) -> None:
        self._runtime.metrics.turn_model_seconds.observe(estimate.model_s)
        if self.conversation is not None:
            self.conversation.turn_estimate(estimate)

    def _handle_transcript(self, transcript: Transcript) -> None:
        metrics = self._runtime.metrics
        if transcript.provisional:
            metrics.speculations.labels("reported").inc()
            if self.conversation is not None:
                self.conversation.transcript(
                    transcript.text, utterance_done=False, latency_s=transcript.latency_s,
                    speech_s=0.0, span=(transcript.start, transcript.end), provisional=True,
                    heard=_heard(transcript))
            return
        if transcript.speculative:
            metrics.speculations.labels("used").inc()
        if transcript.asr_s:
            self._runtime.metrics.asr_seconds.observe(transcript.asr_s)
            self._runtime.metrics.transcript_latency.observe(transcript.latency_s)
        if transcript.asr_decoding and transcript.asr_decoding != self.session.asr_decoding:
            self.session.asr_decoding = transcript.asr_decoding
            self.session.touch()
        if transcript.text:
            self.peer.send(TranscriptEvent(transcript.text, round(transcript.start, 3),
                                           round(transcript.end, 3)))
        if self.conversation is not None:
            self.conversation.transcript(
                transcript.text,
                utterance_done=transcript.utterance_done,
                latency_s=transcript.latency_s,
                speech_s=transcript.end - transcript.start,
                span=(transcript.start, transcript.end),
                heard=_heard(transcript),
            )
            return
        if transcript.text:
            if not self._pieces:
                self._heard_at = transcript.heard_at
            self._heard_until = transcript.heard_until
            self._pieces.append(transcript.text)
            self.session.answer_in_progress(" ".join(self._pieces))
        if transcript.utterance_done:
            self._commit_user_turn()

    def _commit_user_turn(self) -> None:
        if self._pieces:
            self.session.add_turn("user", " ".join(self._pieces),
                                  at=self._heard_at, until=self._heard_until)
            self._pieces = []
            self.session.answer_in_progress("")

    # -- anomalies and messages ---------------------------------------------------------

    def _handle_anomalies(self, anomalies: list[Anomaly], rgb: np.ndarray) -> None:
        for anomaly in anomalies:
            name = f"{anomaly.at:%Y%m%dT%H%M%S}-{anomaly.type}-{uuid.uuid4().hex[:6]}.jpg"
            record = anomaly.to_record()
            record["evidence_url"] = self._runtime.urls.evidence(self.interview.session_id, name)
            self.session.add_anomaly(record, at=anomaly.onset_at)
            self._runtime.metrics.anomalies.labels(anomaly.type).inc()
            self.peer.send(AnomalyEvent(
                anomaly=anomaly.type, timestamp=record["timestamp"], count=anomaly.count,
                detections=tuple(record["detections"]), evidence_url=record["evidence_url"],
            ))
            self._write_evidence(name, rgb, anomaly)
            log.info("%s: anomaly %s (%d)", self._name, anomaly.type, anomaly.count)

    def _write_evidence(self, name: str, rgb: np.ndarray, anomaly: Anomaly) -> None:
        path = self._runtime.layout.evidence(self.interview.session_id, name)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._runtime.file_executor, _write_jpeg, path, rgb, anomaly)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    def _handle_message(self, message: ClientMessage) -> None:
        if isinstance(message, EndRequest):
            self._on_gone("the candidate ended the interview", False)


def _write_jpeg(path: Path, rgb: np.ndarray, anomaly: Anomaly) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_evidence(rgb, anomaly.detections))


def _heard(transcript: Transcript) -> tuple[float, float] | None:
    if transcript.heard_at is None or transcript.heard_until is None:
        return None
    return transcript.heard_at, transcript.heard_until
