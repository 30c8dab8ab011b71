"""Live media for every session of this process: models, executors, peers.

`MediaService.connect()` answers a session's offer with a new `LiveMedia`,
at most one per session, and registers its closing with the session registry
so that however the session ends, its media is closed first.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.anomaly import AnomalySettings
from engine.detector import load_detector
from engine.registry import SessionRegistry
from engine.session import InterviewSession, utc_now
from engine.transcriber import WhisperSettings, WhisperTranscriber, resolve_asr_model
from engine.vad import SileroVadModel
from media.live import LiveMedia, MediaModels, MediaRuntime

__all__ = ["AlreadyConnected", "MediaService", "MediaSettings", "load_models"]

log = logging.getLogger(__name__)


class AlreadyConnected(Exception):
    """The session already has a live peer."""


@dataclass(frozen=True)
class MediaSettings:
    data_dir: Path
    ice_servers: tuple[dict[str, Any], ...] = ()
    detect_fps: float = 2.0
    keepalive_timeout_s: float = 8.0
    detector_kind: str = "nanodet"
    detector_model: str | None = None
    asr_model: str | None = None
    asr_threads: int = 1
    device_labels: tuple[str, ...] = AnomalySettings().device_labels


def load_models(settings: MediaSettings) -> MediaModels:
    """Load the detector, Whisper and the VAD (blocking: seconds)."""
    model, label = resolve_asr_model(settings.asr_model, settings.data_dir / "models")
    return MediaModels(
        detector=load_detector(settings.detector_kind, settings.detector_model),
        transcriber=WhisperTranscriber(model, WhisperSettings(cpu_threads=settings.asr_threads)),
        vad_model=SileroVadModel(),
        asr_model=label,
    )


class MediaService:
    def __init__(
        self,
        settings: MediaSettings,
        registry: SessionRegistry,
        evidence_url: Callable[[uuid.UUID, str], str],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._evidence_url = evidence_url
        self._runtime: MediaRuntime | None = None
        self._loading = asyncio.Lock()
        self._live: dict[uuid.UUID, LiveMedia | None] = {}

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
                on_gone=lambda reason: self._gone(session_id, reason),
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
        if self._runtime is not None:
            self._runtime.shutdown()

    async def _ensure_runtime(self) -> MediaRuntime:
        async with self._loading:
            if self._runtime is None:
                s = self._settings
                loop = asyncio.get_running_loop()
                models = await loop.run_in_executor(None, load_models, s)
                self._runtime = MediaRuntime(
                    models=models,
                    data_dir=s.data_dir,
                    ice_servers=s.ice_servers,
                    detect_fps=s.detect_fps,
                    keepalive_timeout_s=s.keepalive_timeout_s,
                    anomaly_settings=AnomalySettings(device_labels=s.device_labels),
                )
            return self._runtime

    def _gone(self, session_id: uuid.UUID, reason: str) -> None:
        log.info("session %s: %s; ending it", session_id, reason)
        self._registry.end_soon(session_id)

    async def _close(self, session_id: uuid.UUID) -> None:
        media = self._live.pop(session_id, None)
        if media is not None:
            await media.close()
