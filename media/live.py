"""A session's live media: the peer, its tracks' pipelines, and their events.

`LiveMedia` is what a successful offer creates. It routes transcripts and
anomalies into the `InterviewSession` and to the candidate's data channel,
writes anomaly evidence off the loop, and asks its owner to end the session
(`on_gone`) when the candidate leaves, ends, or goes silent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from engine.anomaly import Anomaly, AnomalyRules, AnomalySettings
from engine.detector import Detector
from engine.evidence import render_evidence
from engine.session import InterviewSession
from engine.transcriber import Transcriber
from engine.vad import SileroVadModel, VadSettings, VoiceActivityDetector
from media.audio_track import AudioTranscriber, Transcript
from media.peer import InterviewPeer
from media.video_track import VideoAnalyzer

__all__ = ["LiveMedia", "MediaModels", "MediaRuntime"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaModels:
    """Loaded once per process and shared by every session."""

    detector: Detector
    transcriber: Transcriber
    vad_model: SileroVadModel
    asr_model: str  # the label recorded as `asr_model`


@dataclass
class MediaRuntime:
    """What every session's media shares: models, executors, settings."""

    models: MediaModels
    data_dir: Path
    ice_servers: tuple[dict[str, Any], ...] = ()
    detect_fps: float = 2.0
    keepalive_timeout_s: float = 8.0
    anomaly_settings: AnomalySettings = field(default_factory=AnomalySettings)
    vad_settings: VadSettings = field(default_factory=VadSettings)
    detect_executor: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="detect")
    )
    asr_executor: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="asr")
    )
    vad_executor: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="vad")
    )
    file_executor: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="media-files")
    )

    def shutdown(self) -> None:
        for executor in (self.detect_executor, self.asr_executor, self.vad_executor,
                         self.file_executor):
            executor.shutdown(wait=False, cancel_futures=True)


class LiveMedia:
    def __init__(
        self,
        session: InterviewSession,
        runtime: MediaRuntime,
        *,
        on_gone: Callable[[str], None],
        evidence_url: Callable[[str], str],
    ) -> None:
        self.session = session
        self._runtime = runtime
        self._on_gone = on_gone
        self._evidence_url = evidence_url
        self._name = f"session-{str(session.session_id)[:8]}"
        self.peer = InterviewPeer(
            name=self._name,
            ice_servers=runtime.ice_servers,
            keepalive_timeout_s=runtime.keepalive_timeout_s,
            on_track=self._start_track,
            on_message=self._handle_message,
            on_gone=on_gone,
        )
        self.audio: AudioTranscriber | None = None
        self.video: VideoAnalyzer | None = None
        self._pieces: list[str] = []
        self._writes: set[asyncio.Future[None]] = set()
        session.asr_model = runtime.models.asr_model

    async def answer(self, sdp: str) -> str:
        return await self.peer.answer(sdp)

    async def close(self) -> None:
        """Stop the pipelines (finishing transcription of what was heard), close the peer."""
        await self.peer.close()
        if self.video is not None:
            await self.video.close()
        if self.audio is not None:
            await self.audio.close()
        self._commit_user_turn()
        if self._writes:
            await asyncio.wait(self._writes, timeout=10)

    def stats(self) -> dict[str, Any]:
        return {
            "audio": vars(self.audio.stats) if self.audio else None,
            "video": vars(self.video.stats) if self.video else None,
            "messages_dropped": self.peer.messages_dropped,
        }

    def _start_track(self, track: MediaStreamTrack) -> None:
        runtime = self._runtime
        if track.kind == "audio" and self.audio is None:
            self.audio = AudioTranscriber(
                track,
                vad=VoiceActivityDetector(runtime.models.vad_model, runtime.vad_settings),
                transcriber=runtime.models.transcriber,
                vad_executor=runtime.vad_executor,
                asr_executor=runtime.asr_executor,
                on_transcript=self._handle_transcript,
                on_frame=lambda _frame: self.peer.seen(),
                name=self._name,
            )
        elif track.kind == "video" and self.video is None:
            self.video = VideoAnalyzer(
                track,
                detector=runtime.models.detector,
                executor=runtime.detect_executor,
                fps=runtime.detect_fps,
                rules=AnomalyRules(runtime.anomaly_settings),
                on_anomalies=self._handle_anomalies,
                on_frame=lambda _frame: self.peer.seen(),
                name=self._name,
            )
        else:
            log.warning("%s: ignoring extra %s track", self._name, track.kind)

    def _handle_transcript(self, transcript: Transcript) -> None:
        if transcript.text:
            self._pieces.append(transcript.text)
            self.peer.send({
                "type": "transcript",
                "final": True,
                "text": transcript.text,
                "start": round(transcript.start, 3),
                "end": round(transcript.end, 3),
            })
        if transcript.utterance_done:
            self._commit_user_turn()

    def _commit_user_turn(self) -> None:
        if self._pieces:
            self.session.add_turn("user", " ".join(self._pieces))
            self._pieces = []

    def _handle_anomalies(self, anomalies: list[Anomaly], rgb: np.ndarray) -> None:
        for anomaly in anomalies:
            name = f"{anomaly.at:%Y%m%dT%H%M%S}-{anomaly.type}-{uuid.uuid4().hex[:6]}.jpg"
            record = anomaly.to_record()
            record["evidence_url"] = self._evidence_url(name)
            self.session.add_anomaly(record)
            # The record's own "type" names the anomaly; the message's names the event.
            self.peer.send({**record, "type": "anomaly", "anomaly": record["type"]})
            self._write_evidence(name, rgb, anomaly)
            log.info("%s: anomaly %s (%d)", self._name, anomaly.type, anomaly.count)

    def _write_evidence(self, name: str, rgb: np.ndarray, anomaly: Anomaly) -> None:
        path = evidence_path(self._runtime.data_dir, self.session.session_id, name)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._runtime.file_executor, _write_jpeg, path, rgb, anomaly
        )
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    def _handle_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "end":
            self._on_gone("the candidate ended the interview")
        else:
            self.peer.send({"type": "error", "message": f"unknown message type {message['type']!r}"})


def evidence_path(data_dir: Path, session_id: uuid.UUID, name: str) -> Path:
    return data_dir / "evidence" / str(session_id) / name


def _write_jpeg(path: Path, rgb: np.ndarray, anomaly: Anomaly) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_evidence(rgb, anomaly.detections))

