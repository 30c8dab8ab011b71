"""Prometheus metrics of one server process.

Latencies are histograms observed once per event (a transcribed piece, a
sampled frame, a synthesized sentence, a turn), never per media frame.
Frame counters are read from the live pipelines' own stats at scrape time
(plus the totals of pipelines already closed), so the media path pays
nothing for them.
"""

from __future__ import annotations

import time

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from media.queues import QueueLoad

__all__ = ["FrameTotals", "MediaMetrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0,
                    2.25, 2.5, 3.0, 5.0, 10.0)
_FAST_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


@dataclass
class FrameTotals:
    """Media counters, summed over pipelines."""

    audio_in: int = 0
    audio_dropped: int = 0
    video_in: int = 0
    video_analysed: int = 0  # samples handled: a detector run or the change gate's "unchanged"
    video_unchanged: int = 0  # of those, the ones the gate spared the detector
    video_dropped: int = 0
    pieces_dropped: int = 0
    recording_dropped: int = 0
    video_refused: int = 0  # frames too large to analyse or record
    extra_track_frames: int = 0  # frames of tracks beyond the first audio and video, discarded
    messages_refused: int = 0  # data-channel messages beyond the candidate's rate
    messages_oversized: int = 0  # messages cut in reassembly: over the size limit
    events_dropped: int = 0  # data-channel events the candidate did not read in time
    recording_cpu_s: float = 0.0  # CPU time of the recorders' writer threads

    def add(self, other: FrameTotals) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class MediaMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _cpu_read: Callable[[], Mapping[str, float]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.asr_seconds = Histogram("interview_asr_seconds", "Whisper time per speech piece",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.transcript_latency = Histogram(
            "interview_transcript_latency_seconds",
            "Candidate's last voiced frame arriving -> final transcript",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.detect_seconds = Histogram("interview_detect_seconds",
                                        "Conversion + detection per sampled frame",
                                        buckets=_FAST_BUCKETS, registry=r)
        self.tts_seconds = Histogram("interview_tts_seconds", "Synthesis time per sentence",
                                     buckets=_FAST_BUCKETS, registry=r)
        self.llm_first_sentence = Histogram(
            "interview_llm_first_sentence_seconds",
            "End of the candidate's turn -> the interviewer's first sentence worded",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.turn_latency = Histogram(
            "interview_turn_latency_seconds",
            "Candidate's last voiced frame -> first interviewer audio frame sent",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.reply_seconds = Histogram(
            "interview_reply_seconds",
            "End of the candidate's turn decided -> first interviewer audio frame sent "
            "(the turn latency without the designed end-of-turn silence)",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.anomalies = Counter("interview_anomalies", "Anomaly episodes recorded", ["type"],
                                 registry=r)
        self.turn_decisions = Counter(
            "interview_turn_decisions", "Candidate turns ended, by the rule that ended them "
            "(model, ceiling, silence: engine/turns.py)", ["rule"], registry=r)
        self.turn_silence = Histogram(
            "interview_turn_silence_seconds",
            "Silence waited after the candidate's last voiced frame before the turn was judged over",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.turn_model_seconds = Histogram(
            "interview_turn_model_seconds", "End-of-turn model time per call",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.speculations = Counter(
            "interview_speculative_transcripts", "Speculative transcriptions at a pause, by "
            "outcome (reported: a provisional transcript went out; used: the committed "
            "piece took the result instead of being transcribed again)", ["outcome"],
            registry=r)
        self.closed = FrameTotals()

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge computed at scrape time (live sessions, outbox size...)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def counter(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter read at scrape time from a running total kept elsewhere."""
        self.registry.register(_FunctionCounter(name, documentation, read))

    def cpu_stages(self, read: Callable[[], Mapping[str, float]]) -> None:
        """CPU seconds per stage (`interview_cpu_seconds_total{stage}`): `read()`
        gives the executors' and the voice's; recording comes from the frame
        totals; "media" is the rest of this process (aiortc, decoding, the loop)."""
        self._cpu_read = read

    def frame_counters(self, live: Callable[[], Iterable[FrameTotals]]) -> None:
        """Export frame counters summed over live pipelines and closed ones."""
        self.registry.register(_FrameCollector(self, live))

    def queue_loads(self, read: Callable[[], Mapping[str, QueueLoad]]) -> None:
        """Export each queue's depth and oldest item's age, read at scrape time."""
        self.registry.register(_QueueCollector(read))


class _FrameCollector(Collector):
    def __init__(self, metrics: MediaMetrics, live: Callable[[], Iterable[FrameTotals]]) -> None:
        self._metrics = metrics
        self._live = live

    def collect(self) -> Iterator[Metric]:
        total = FrameTotals()
        total.add(self._metrics.closed)
        for totals in self._live():
            total.add(totals)
        received = CounterMetricFamily("interview_frames_received", "Media frames received",
                                       labels=["kind"])
        received.add_metric(["audio"], total.audio_in)
        received.add_metric(["video"], total.video_in)
        dropped = CounterMetricFamily("interview_frames_dropped",
                                      "Frames dropped by a full queue (audio)", labels=["kind"])
        dropped.add_metric(["audio"], total.audio_dropped)
        samples = CounterMetricFamily("interview_video_samples",
                                      "Sampled video frames, analysed or missed while busy",
                                      labels=["result"])
        samples.add_metric(["analysed"], total.video_analysed)
        samples.add_metric(["dropped"], total.video_dropped)
        skipped = CounterMetricFamily(
            "interview_detector_runs_skipped",
            "Analysed video samples the change gate found unchanged: they reused the "
            "last detector run's result (detector runs = analysed - skipped)")
        skipped.add_metric([], total.video_unchanged)
        pieces = CounterMetricFamily("interview_speech_pieces_dropped",
                                     "Speech pieces dropped because transcription was behind")
        pieces.add_metric([], total.pieces_dropped)
        recording = CounterMetricFamily("interview_recording_frames_dropped",
                                        "Frames left out of the recording: its writer was behind")
        recording.add_metric([], total.recording_dropped)
        refused = CounterMetricFamily(
            "interview_input_refused",
            "Candidate input refused: oversized video frames, frames of extra tracks, "
            "data-channel messages beyond the rate or cut before they were whole, events the "
            "candidate did not read",
            labels=["kind"])
        refused.add_metric(["video_frame_too_large"], total.video_refused)
        refused.add_metric(["extra_track_frame"], total.extra_track_frames)
        refused.add_metric(["message_rate"], total.messages_refused)
        refused.add_metric(["message_size"], total.messages_oversized)
        refused.add_metric(["event_unread"], total.events_dropped)
        yield from (received, dropped, samples, skipped, pieces, recording, refused)
        read = self._metrics._cpu_read
        if read is not None:
            yield _cpu_family(read(), total.recording_cpu_s)


# Stages whose CPU is spent outside this process (not subtracted from "media").
_OUT_OF_PROCESS = ("voice",)


def _cpu_family(stages: Mapping[str, float], recording_s: float) -> Metric:
    cpu = CounterMetricFamily(
        "interview_cpu_seconds", "CPU seconds by stage: vad (VAD and the end-of-turn model), "
        "asr, detection, voice (the Piper programs), recording, files, media (the rest of "
        "this process: aiortc, decoding, the event loop)", labels=["stage"])
    measured = dict(stages, recording=recording_s)
    inside = sum(v for k, v in measured.items() if k not in _OUT_OF_PROCESS)
    measured["media"] = max(0.0, time.process_time() - inside)
    for stage, seconds in sorted(measured.items()):
        cpu.add_metric([stage], seconds)
    return cpu


class _QueueCollector(Collector):
    def __init__(self, read: Callable[[], Mapping[str, QueueLoad]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("interview_queue_depth",
                                  "Items waiting in a queue (summed over sessions)",
                                  labels=["queue"])
        oldest = GaugeMetricFamily("interview_queue_oldest_seconds",
                                   "Age of the oldest item waiting in a queue", labels=["queue"])
        for name, load in sorted(self._read().items()):
            depth.add_metric([name], load.depth)
            oldest.add_metric([name], load.oldest_s)
        yield from (depth, oldest)


class _FunctionCounter(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())
