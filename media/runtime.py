"""What every call of this process shares: the models, their executors, settings.

Models load once, on the first call, off the loop (`load_models`), or are
handed in (`make_app(config, models=...)`): a test plugs its own detector or
transcriber in at this seam instead of patching.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from config import Config
from engine.conversation import TurnSettings
from adapters.detectors import load_detector
from adapters.silero import SileroVadModel
from adapters.smart_turn import SmartTurnModel
from adapters.tts import TtsSettings, load_synthesizer
from adapters.tts_cache import CachedSynthesizer
from adapters.whisper import WhisperSettings, WhisperTranscriber, resolve_asr_model
from engine.ports import Detector, Synthesizer, Transcriber, TurnModel, VadModel
from engine.turns import EndOfTurnSettings
from engine.vad import VadSettings
from layout import DataLayout, PublicUrls
from media.asr_scheduler import AsrScheduler
from media.metrics import MediaMetrics
from media.queues import MeteredExecutor, QueueLoad
from media.video_track import ChangeGate

__all__ = ["MediaModels", "MediaRuntime", "load_models"]

log = logging.getLogger(__name__)


def _single(name: str) -> Callable[[], Executor]:
    return lambda: MeteredExecutor(1, name)


@dataclass(frozen=True)
class MediaModels:
    """Loaded once per process and shared by every call."""

    detector: Detector
    transcriber: Transcriber
    vad_model: VadModel
    asr_model: str  # the label recorded as `asr_model`
    synthesizer: Synthesizer | None = None
    turn_model: TurnModel | None = None  # None: the fixed-silence end of turn
    # Speculative text at a pause (fast, "fit"); None: the transcriber itself.
    draft_transcriber: Transcriber | None = None


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _resolve_asr(config: Config) -> tuple[str, str]:
    try:
        return resolve_asr_model(config.asr_model, config.model_cache_dir)
    except OSError as exc:
        # The user's cache may be unwritable (a service user without a home);
        # a cache the operator named is not second-guessed.
        if config.asr_cache_dir is not None or exc.errno not in _NOT_WRITABLE:
            raise
        log.warning("ASR model cache not writable (%s): joining the model under DATA_DIR", exc)
        return resolve_asr_model(config.asr_model, DataLayout(config.data_dir).models)


def load_models(config: Config) -> MediaModels:
    """Load the detector, Whisper, the VAD and the voice (blocking: seconds)."""
    model, label = _resolve_asr(config)
    transcriber = WhisperTranscriber(
        model,
        WhisperSettings(
            cpu_threads=config.asr_threads,
            num_workers=config.asr_workers,
            encoder=config.asr_encoder,
            fit_margin_s=config.asr_fit_margin_s,
        ),
    )
    return MediaModels(
        detector=load_detector(config.detector_kind, config.detector_model),
        transcriber=transcriber,
        draft_transcriber=transcriber.draft(),
        vad_model=SileroVadModel(),
        asr_model=label,
        synthesizer=load_synthesizer(_tts_settings(config)) if config.interviewer else None,
        turn_model=SmartTurnModel()
        if config.interviewer and config.turn_detection == "smart-turn" else None,
    )


def _voice_counters(metrics: MediaMetrics, synthesizer: Synthesizer | None) -> None:
    """The sentence cache's and the Piper pool's running totals, read at scrape time."""
    pool = getattr(synthesizer, "inner", synthesizer)
    for name, owner, attribute, documentation in (
        ("interview_tts_cache_hits", synthesizer, "hits", "Sentences served from the TTS cache"),
        ("interview_tts_cache_misses", synthesizer, "misses", "Sentences synthesized (cache misses)"),
        ("interview_tts_cache_warmed", synthesizer, "warmed",
         "Sentences synthesized ahead of time into the TTS cache"),
        ("interview_tts_worker_restarts", pool, "restarts", "Piper worker programs restarted"),
        ("interview_tts_fallback_sentences", pool, "fallbacks",
         "Sentences espeak-ng said because a Piper worker failed twice"),
    ):
        if hasattr(owner, attribute):
            metrics.counter(name, documentation, _reader(owner, attribute))


def _reader(owner: object, attribute: str) -> Callable[[], float]:
    return lambda: float(getattr(owner, attribute))


def _tts_settings(config: Config) -> TtsSettings:
    return TtsSettings(config.tts, config.tts_processes, config.tts_cache_entries)


@dataclass
class MediaRuntime:
    """What every call shares: models, executors, settings, where files go."""

    models: MediaModels
    layout: DataLayout
    urls: PublicUrls = field(default_factory=PublicUrls)
    ice_servers: tuple[dict[str, Any], ...] = ()
    detect_fps: float = 2.0
    # None: a detector run on every sampled frame (DETECT_MAX_INTERVAL_S=0).
    detect_gate: ChangeGate | None = field(default_factory=ChangeGate)
    keepalive_timeout_s: float = 8.0
    vad_settings: VadSettings = field(default_factory=VadSettings)
    turn_settings: TurnSettings = field(default_factory=TurnSettings)
    metrics: MediaMetrics = field(default_factory=MediaMetrics)
    # How long a closing call may drain what it was still hearing (and write
    # its evidence); shorter at shutdown (`MediaService.hurry`).
    drain_s: float = 10.0
    detect_executor: Executor = field(default_factory=_single("detect"))
    # The change gate's thumbnails (a fraction of a millisecond each): apart
    # from the detector, so one session's unchanged sample never waits behind
    # another session's detector run and is dropped.
    gate_executor: Executor = field(default_factory=_single("video-gate"))
    # One scheduler for every session's pieces (fair, bounded): media.asr_scheduler.
    asr_executor: Executor = field(default_factory=lambda: AsrScheduler(1, "asr"))
    vad_executor: Executor = field(default_factory=_single("vad"))
    # The end-of-turn model (Smart Turn, 60-160 ms a call): apart from the VAD,
    # so that no session's audio waits behind another's model call.
    turn_executor: Executor = field(default_factory=_single("turn"))
    tts_executor: Executor = field(default_factory=_single("tts"))
    file_executor: Executor = field(default_factory=_single("media-files"))

    @classmethod
    def from_config(cls, config: Config, models: MediaModels, metrics: MediaMetrics) -> MediaRuntime:
        _voice_counters(metrics, models.synthesizer)
        runtime = cls(
            models=models,
            layout=DataLayout(config.data_dir, config.media_dir),
            urls=PublicUrls(config.public_url or ""),
            ice_servers=config.ice_servers,
            detect_fps=config.detect_fps,
            detect_gate=ChangeGate(config.detect_change, config.detect_max_interval_s)
            if config.detect_max_interval_s > 0 else None,
            keepalive_timeout_s=config.keepalive_timeout_s,
            metrics=metrics,
            asr_executor=AsrScheduler(
                config.asr_workers, "asr",
                max_pending=config.asr_max_pending, max_wait_s=config.asr_max_wait_s,
                max_batch=config.asr_max_batch,
            ),
            detect_executor=MeteredExecutor(config.detect_workers, "detect"),
            # One thread per Piper worker program: each call borrows one.
            tts_executor=MeteredExecutor(config.tts_processes, "tts"),
            turn_settings=TurnSettings(
                end_of_turn_s=config.end_of_turn_s,
                nudge_s=config.nudge_s,
                max_minutes=config.interview_max_minutes,
                end_of_turn=EndOfTurnSettings(
                    threshold=config.turn_threshold, ceiling_s=config.turn_ceiling_s)
                if models.turn_model is not None and config.turn_detection == "smart-turn"
                else None,
            ),
        )
        metrics.cpu_stages(runtime.cpu_seconds)
        return runtime

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each stage's threads spent in jobs, and the voice's programs."""
        out: dict[str, float] = {}
        for stage, executor in (("asr", self.asr_executor), ("detection", self.detect_executor),
                                ("detection", self.gate_executor),
                                ("vad", self.vad_executor), ("turn", self.turn_executor),
                                ("files", self.file_executor)):
            if isinstance(executor, AsrScheduler):
                out[stage] = executor.stats.cpu_seconds
            elif isinstance(executor, MeteredExecutor):
                out[stage] = out.get(stage, 0.0) + executor.cpu_seconds
        # Whisper computes on CTranslate2's own threads, not the scheduler's.
        decoder = getattr(self.models.transcriber, "cpu_seconds", None)
        if isinstance(decoder, float):
            out["asr"] = out.get("asr", 0.0) + decoder
        pool = getattr(self.models.synthesizer, "inner", self.models.synthesizer)
        voice = getattr(pool, "cpu_seconds", None)
        if isinstance(voice, float):
            out["voice"] = voice
        return out

    async def warm_voice(self, phrases: Iterable[str]) -> int:
        """Synthesize `phrases` into the sentence cache ahead of time, one at a
        time, each when the TTS executor has nothing else to do; how many were.

        A live sentence waits at most for the one phrase in progress
        (0.1-0.4 s). At most half the cache is filled, most needed phrases
        first. It stops at the first phrase the cache did not keep (the
        voice is failing over to espeak-ng: no use asking again). Without a
        sentence cache it does nothing. Cancelled, it lets the phrase in
        progress finish, so the voice is not closed under it.
        """
        synthesizer = self.models.synthesizer
        if not isinstance(synthesizer, CachedSynthesizer):
            return 0
        executor = self.tts_executor
        before = synthesizer.warmed
        for phrase in list(phrases)[: synthesizer.max_entries // 2]:
            if isinstance(executor, MeteredExecutor):
                job = executor.submit_when_idle(synthesizer.warm, phrase)
            else:
                job = executor.submit(synthesizer.warm, phrase)
            try:
                kept = await asyncio.shield(asyncio.wrap_future(job))
            except asyncio.CancelledError:
                if not job.cancel():  # it runs: let it end before the voice closes
                    await asyncio.wait([asyncio.wrap_future(job)])
                raise
            except Exception as error:
                log.warning("voice warm-up stopped: %r", error)
                break
            if not kept:
                log.warning("voice warm-up stopped: the voice fell back on %r", phrase)
                break
        warmed = synthesizer.warmed - before
        log.info("voice warm-up: %d phrase(s) synthesized ahead of time", warmed)
        return warmed

    def executors(self) -> dict[str, Executor]:
        return {"asr": self.asr_executor, "detect": self.detect_executor,
                "video_gate": self.gate_executor,
                "vad": self.vad_executor, "turn": self.turn_executor,
                "tts": self.tts_executor, "files": self.file_executor}

    def job_loads(self) -> dict[str, QueueLoad]:
        """Jobs waiting for each executor's threads (`<name>_jobs`)."""
        return {f"{name}_jobs": ex.load() for name, ex in self.executors().items()
                if isinstance(ex, (MeteredExecutor, AsrScheduler))}

    def shutdown(self) -> None:
        for executor in self.executors().values():
            executor.shutdown(wait=False, cancel_futures=True)
        # Piper's worker programs; they would also exit on their own once
        # this process is gone and their stdin closes.
        close = getattr(self.models.synthesizer, "close", None)
        if callable(close):
            close()
