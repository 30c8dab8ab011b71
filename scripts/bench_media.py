"""Benchmark one live session against a real server process on this machine.

The server runs as `.venv/bin/python server.py` (PORT=0, a fresh DATA_DIR,
ICE_LOOPBACK_ONLY=1, the embedded PostgreSQL, no API key; INTERVIEWER=0 for
the pure media figures, or on with `--interviewer`). The session is created
from a 24-question job template inserted in that database, so an interviewer
never runs out of questions. The candidate is a real aiortc peer in this
process (the kit's `testing.Candidate`) and sends:

* audio: recorded LibriVox answers from `tests/data/speech/` (nine answers,
  63.5 s of recordings, each followed by a 2.5 s pause), paced in real time;
* video: a real photo of one person at 10 fps; 12, 40 and 68 s in, a photo
  of two persons for 6 s, then the first photo again.

Prints, per run:

* last voiced frame -> final transcript, from the client's side (when the
  frame holding each answer's last voiced sample was handed to aiortc, to
  when the transcript of that answer's last piece arrived on the data
  channel), and the server's own `interview_transcript_latency_seconds`;
* detector time per sampled frame from `interview_detect_seconds`;
* first two-person frame sent -> `anomaly` message received, per episode;
* CPU over the run: the server process (`process_cpu_seconds_total`), the
  sums of the ASR, detection and TTS histograms (wall time of those jobs,
  waiting for a core included), the embedded PostgreSQL and this client;
* the server's RSS (psutil): idle, with the models loaded, at the end, the
  peak, and its course over the run;
* candidate `end` -> final row stored, and SIGTERM -> exit.

By default the session runs twice, RECORDING=0 then RECORDING=1, and the
difference is reported as the cost of recording. Figures only: nothing is
asserted. The client shares the machine's CPU with the server.

The shared harness (server process, /metrics, timed tracks, candidate) lives
here too; `bench_turns.py` imports it.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_media.py
       [--recording both|0|1] [--interviewer] [--pause 2.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import av
import numpy as np
import psutil  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

import testing
from testing import (
    Candidate,
    InterviewerEar,
    PhotoTrack,
    ScriptedSpeech,
    read_wav,
    start_server,
    word_errors,
)

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "JOB_ROLE",
    "ONE_PERSON",
    "QUESTIONS",
    "Answer",
    "BenchCandidate",
    "Histogram",
    "PlayedClip",
    "RssSampler",
    "Scrape",
    "ServerProcess",
    "TimedPhotos",
    "TimedSpeech",
    "create_template",
    "finish",
    "join",
    "load_answer",
    "percentile",
    "print_problems",
    "scrape",
    "spread",
]

SPEECH = REPO / "tests" / "data" / "speech"
PHOTOS = REPO.parent / "shared" / "testdata" / "photos"
ONE_PERSON = PHOTOS / "coco_000000000436_1person_eating_closeup.jpg"
TWO_PERSONS = PHOTOS / "coco_000000000165_2persons_indoor.jpg"
CLIP_STEM = "sense_and_sensibility_01_austen_64kb-"
ANSWER_ORDER = ("0870", "0880", "0890", "0920", "longer", "0870", "0890", "0920", "0880")
TWO_PERSON_AT_S = (12.0, 40.0, 68.0)  # after the first answer starts
TWO_PERSON_FOR_S = 6.0
VOICED_FRACTION = 0.05  # of the loudest 20 ms window, for clips without a .lab
AUDIBLE = 500  # int16 peak of a received frame that counts as interviewer speech
JOB_ROLE = "Backend engineer"
# A job template long enough that the interviewer never runs out of questions.
QUESTIONS = (
    "Tell me about the last system you designed.",
    "How do you handle a disagreement in your team?",
    "What is a technical decision you regret?",
    "How do you test a new service before launch?",
    "Describe a production incident you handled.",
    "How do you keep a large codebase maintainable?",
    "What does a good code review look like to you?",
    "How do you estimate a project's effort?",
    "Tell me about a time you mentored someone.",
    "How do you decide between building and buying?",
    "What metrics do you watch for a web service?",
    "How do you approach a slow database query?",
    "Describe a project you are proud of.",
    "How do you handle changing requirements?",
    "What is your approach to documentation?",
    "How do you learn a new technology quickly?",
    "Tell me about a difficult bug you fixed.",
    "How do you balance speed and quality?",
    "What makes a team work well together?",
    "How do you handle on-call duty?",
    "Describe how you would design a rate limiter.",
    "What would you improve in your last team?",
    "How do you give feedback to a peer?",
    "Where do you want to grow in the next year?",
)

log = logging.getLogger("bench")


# -- statistics ----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    """`n=…  p50 …  p95 …  max …` in `unit`."""
    if not values:
        return "n=0"
    p50, p95 = percentile(values, 50) * scale, percentile(values, 95) * scale
    return f"n={len(values)}  p50 {p50:.3f}{unit}  p95 {p95:.3f}{unit}  max {max(values) * scale:.3f}{unit}"


@dataclass(frozen=True)
class Histogram:
    """One Prometheus histogram (or the difference of two scrapes of it)."""

    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    total: float
    count: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Prometheus' `histogram_quantile`: linear within the bucket."""
        if not self.count:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for upper, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(upper):
                    return lower  # beyond the last finite bound: its bound
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                return lower + (upper - lower) * share
            lower, below = upper, cumulative
        return lower

    def describe(self, scale: float = 1.0, unit: str = "s") -> str:
        if not self.count:
            return "n=0"
        return (
            f"n={self.count:.0f}  mean {self.mean * scale:.3f}{unit}  "
            f"p50 {self.quantile(0.5) * scale:.3f}{unit}  p95 {self.quantile(0.95) * scale:.3f}{unit}"
            f"  sum {self.total:.2f}s"
        )


SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """The samples of one GET /metrics, keyed by name and labels."""

    at: float
    samples: Mapping[SampleKey, float]

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return cls(at, samples)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def since(self, earlier: Scrape) -> Scrape:
        """Counters and histograms as increments since `earlier`; gauges as now."""
        delta = {k: v - earlier.samples.get(k, 0.0) for k, v in self.samples.items()}
        for key, value in self.samples.items():
            if not key[0].endswith(("_total", "_bucket", "_sum", "_count")):
                delta[key] = value
        return Scrape(self.at, delta)

    def histogram(self, name: str) -> Histogram:
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (sample, labels), value in self.samples.items()
            if sample == f"{name}_bucket"
        )
        return Histogram(tuple(buckets), self.value(f"{name}_sum"), self.value(f"{name}_count"))


async def scrape(http: aiohttp.ClientSession) -> Scrape:
    async with http.get("/metrics") as resp:
        resp.raise_for_status()
        return Scrape.parse(await resp.text(), time.monotonic())


# -- the server under test -----------------------------------------------------------

@dataclass
class ServerProcess:
    """`server.py` in a subprocess, started by the kit; its output goes to `log_path`."""

    server: testing.ServerProcess
    data_dir: Path
    log_path: Path
    _stack: contextlib.AsyncExitStack

    @classmethod
    async def start(cls, data_dir: Path, settings: Mapping[str, str]) -> ServerProcess:
        env = {"HF_HUB_OFFLINE": "1", "DATA_DIR": str(data_dir), "ICE_LOOPBACK_ONLY": "1",
               **settings}
        log_path = data_dir.parent / f"{data_dir.name}-server.log"
        stack = contextlib.AsyncExitStack()
        server = await stack.enter_async_context(
            start_server(env, log_path=log_path, start_timeout_s=120, stop_timeout_s=90))
        return cls(server, data_dir, log_path, stack)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def started_in_s(self) -> float:
        return self.server.started_in_s

    def postgres(self) -> psutil.Process | None:
        """The embedded PostgreSQL's postmaster (from DATA_DIR/postgres/postmaster.pid)."""
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            return psutil.Process(int(pid_file.read_text().split()[0]))
        return None

    async def stop(self, timeout_s: float = 90) -> float:
        """SIGTERM (the server ends and saves every session), wait; seconds taken."""
        taken = await self.server.stop(timeout_s)
        await self._stack.aclose()
        return taken

    def problems(self) -> list[str]:
        """The server's WARNING/ERROR log lines, minus the local-mode notice."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [
            line for line in lines
            if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line) and "API_KEY is not set" not in line
        ]


def cpu_seconds(process: psutil.Process | None, *, with_children: bool = False) -> float:
    """User + system CPU of a process (and of its live and reaped children)."""
    if process is None:
        return math.nan
    try:
        times = process.cpu_times()
        total = times.user + times.system
        if with_children:
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        return float(total)
    except psutil.Error:
        return math.nan


@dataclass
class RssSampler:
    """The server's resident memory, sampled every `period_s` until stopped."""

    pid: int
    period_s: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes)
    marks: dict[str, tuple[float, int]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    def mark(self, label: str) -> None:
        with contextlib.suppress(psutil.Error):
            self.marks[label] = (time.monotonic(), psutil.Process(self.pid).memory_info().rss)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        process = psutil.Process(self.pid)
        with contextlib.suppress(psutil.Error):
            while True:
                self.samples.append((time.monotonic(), process.memory_info().rss))
                await asyncio.sleep(self.period_s)

    def peak(self, until: float = math.inf) -> int:
        return max((rss for t, rss in self.samples if t <= until), default=0)

    def session_peak(self) -> int:
        """The peak up to the last mark (before shutdown)."""
        return self.peak(max((t for t, _ in self.marks.values()), default=math.inf))

    def describe(self) -> str:
        """The marks, the peak up to the last mark and including shutdown, and
        RSS at each fifth of the time between the first two marks and the last."""
        mib = 1 / (1024 * 1024)
        parts = [f"{label} {rss * mib:.0f}" for label, (_, rss) in self.marks.items()]
        parts.append(f"peak {self.session_peak() * mib:.0f} (with shutdown {self.peak() * mib:.0f}) MiB")
        times = sorted(t for t, _ in self.marks.values())
        if len(times) >= 3 and self.samples:
            begin, finish = times[1], times[-1]
            steps = [begin + (finish - begin) * i / 5 for i in range(6)]
            trend = [next((rss for t, rss in self.samples if t >= step), self.samples[-1][1]) for step in steps]
            parts.append("during the run " + " -> ".join(f"{rss * mib:.0f}" for rss in trend) + " MiB")
        return "; ".join(parts)


# -- the candidate --------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A recorded answer: where its speech ends and what it says."""

    name: str
    path: Path
    duration_s: float
    voiced_end_s: float
    reference: str


def load_answer(key: str) -> Answer:
    """`0870` … `0920` (clips with a .lab) or `longer` (the four joined)."""
    if key == "longer":
        path = SPEECH / "longer.wav"
        reference = " ".join(
            (SPEECH / f"{CLIP_STEM}{n}.txt").read_text().strip() for n in ("0870", "0880", "0890", "0920")
        )
    else:
        path = SPEECH / f"{CLIP_STEM}{key}.wav"
        reference = path.with_suffix(".txt").read_text().strip()
    pcm, rate = read_wav(path)
    lab = path.with_suffix(".lab")
    if lab.exists():  # pocketsphinx's speech end: line 2, first field
        voiced_end_s = float(lab.read_text().split("\n")[1].split()[0])
    else:
        voiced_end_s = _energy_end(pcm, rate)
    return Answer(key, path, len(pcm) / rate, voiced_end_s, reference)


def _energy_end(pcm: np.ndarray, rate: int) -> float:
    """End of the last 20 ms window louder than VOICED_FRACTION of the loudest."""
    size = rate // 50
    windows = pcm[: len(pcm) // size * size].astype(np.float64).reshape(-1, size)
    rms = np.sqrt((windows**2).mean(axis=1))
    loud = np.nonzero(rms > VOICED_FRACTION * rms.max())[0]
    return float((loud[-1] + 1) * size / rate)


@dataclass(frozen=True)
class PlayedClip:
    answer: Answer
    start_s: float  # client stream seconds
    start_frame: int  # index of the clip's first frame
    voiced_end_frame: int  # index of the frame holding the last voiced sample

    @property
    def voiced_end_s(self) -> float:
        return self.start_s + self.answer.voiced_end_s


class TimedSpeech(ScriptedSpeech):
    """`ScriptedSpeech` that remembers when each 20 ms frame went to aiortc."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_at: list[float] = []  # monotonic, by frame index

    def play(self, answer: Answer) -> PlayedClip:
        start = self.next_start()
        self.say(answer.path)
        voiced_end = start + round(answer.voiced_end_s * self.rate)
        samples = self.frame_samples
        return PlayedClip(answer, start / self.rate, start // samples, (voiced_end - 1) // samples)

    def sent(self, frame: int) -> float:
        return self.sent_at[frame] if frame < len(self.sent_at) else math.nan

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        self.sent_at.append(time.monotonic())
        return frame


class TimedPhotos(PhotoTrack):
    """`PhotoTrack` that notes when the first frame of each new photo was sent."""

    def __init__(self, photo: Path, fps: float = 10) -> None:
        super().__init__(photo, fps)  # calls show(): the opening photo is no switch
        self.shown_at: list[float] = []
        self._pending = False

    def show(self, photo: Path) -> None:
        super().show(photo)
        self._pending = True

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        if self._pending:
            self._pending = False
            self.shown_at.append(time.monotonic())
        return frame


class BenchCandidate(Candidate[TimedSpeech, TimedPhotos | None]):
    """A `Candidate` whose ear stamps every audible frame of the interviewer's
    voice (without keeping the audio); its log stamps every message's arrival."""

    def __init__(self, audio: TimedSpeech, video: TimedPhotos | None) -> None:
        super().__init__(audio, video, ear=InterviewerEar(threshold=AUDIBLE + 1,
                                                          keep_audible_times=True))

    def timed(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(e.at, e.body) for e in self.log.of(kind)]

    async def until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait for a message after which `ready()` holds; False on timeout."""
        return await self.log.until(ready, timeout)

    async def ping(self, timeout: float = 5) -> float:
        """Data-channel round trip, `ping` sent -> `pong` received (NaN on timeout):
        how far a message's arrival may trail the moment the server sent it."""
        pongs = len(self.of("pong"))
        sent = time.monotonic()
        self.send({"type": "ping"})
        if not await self.until(lambda: len(self.of("pong")) > pongs, timeout):
            return math.nan
        return self.timed("pong")[pongs][0] - sent

    def first_audible_after(self, t: float) -> float:
        found = self.ear.audible_after(t)
        return math.nan if found is None else found


async def create_template(data_dir: Path) -> str:
    """Insert the job template into the server's embedded PostgreSQL; its id."""
    # postmaster.pid: pid, data dir, start time, port, socket directory, ...
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    conn = await asyncpg.connect(host=lines[4].strip(), port=int(lines[3]), user="postgres",
                                 database="postgres")
    try:
        template_id = await conn.fetchval(
            "INSERT INTO job_templates (job_role, questions) VALUES ($1, $2) RETURNING template_id",
            JOB_ROLE, json.dumps(QUESTIONS),
        )
    finally:
        await conn.close()
    return str(template_id)


async def join(http: aiohttp.ClientSession, candidate: BenchCandidate, body: dict[str, Any]) -> str:
    """Create a session with `body` and connect `candidate` to it; the session id."""
    async with http.post("/sessions", json=body) as resp:
        resp.raise_for_status()
        session_id: str = (await resp.json())["session_id"]
    await candidate.join(http, session_id)
    return session_id


async def finish(http: aiohttp.ClientSession, candidate: BenchCandidate, session_id: str) -> float:
    """Say `end` as the candidate, then wait until the final row is stored.

    Seconds from `end` to a stored row that is no longer `in_progress` (the
    report, and with Gemini its evaluation, come first); NaN after 60 s.
    Waiting matters: a SIGTERM while a session is still ending cuts it short.
    """
    started = time.monotonic()
    if candidate.channel.readyState == "open":
        candidate.send({"type": "end"})
    while time.monotonic() < started + 60:
        async with http.get(f"/sessions/{session_id}") as resp:
            if resp.status == 200 and (await resp.json())["status"] != "in_progress":
                return time.monotonic() - started
        await asyncio.sleep(0.25)
    return math.nan


# -- one media session ------------------------------------------------------------------


@dataclass
class MediaRun:
    label: str
    wall_s: float
    delta: Scrape
    clips: list[PlayedClip]
    transcript_latency: list[float]
    anomaly_delays: list[float]
    unexpected_anomalies: list[str]
    server_cpu_s: float
    postgres_cpu_s: float
    client_cpu_s: float
    rss: RssSampler
    startup_s: float
    join_s: float
    ended_s: float
    shutdown_s: float
    word_errors: tuple[int, int]
    problems: list[str]


async def play_answers(voice: TimedSpeech, answers: list[Answer], pause_s: float) -> list[PlayedClip]:
    played = []
    for answer in answers:
        played.append(voice.play(answer))
        await asyncio.sleep(answer.duration_s + pause_s)
    return played


async def switch_photos(video: TimedPhotos, started: float) -> None:
    for at in TWO_PERSON_AT_S:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        video.show(TWO_PERSONS)
        await asyncio.sleep(TWO_PERSON_FOR_S)
        video.show(ONE_PERSON)


def transcripts_by_clip(
    candidate: BenchCandidate, clips: list[PlayedClip], pause_s: float
) -> dict[int, list[tuple[float, dict[str, Any]]]]:
    """Each clip's transcripts (arrival, body), in arrival order.

    A transcript belongs to the clip whose span (plus most of the pause
    after it) holds its midpoint, in stream seconds: the server's stream
    clock starts with the first frame it receives, ours with the first sent.
    """
    grouped: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    for arrived, event in candidate.timed("transcript"):
        middle = (event["start"] + event["end"]) / 2
        for i, clip in enumerate(clips):
            if clip.start_s - 0.5 <= middle < clip.start_s + clip.answer.duration_s + pause_s - 0.5:
                grouped.setdefault(i, []).append((arrived, event))
    return grouped


def final_latencies(
    grouped: dict[int, list[tuple[float, dict[str, Any]]]], clips: list[PlayedClip], voice: TimedSpeech
) -> list[float]:
    """Per clip: its last voiced frame sent -> the transcript of its last piece received."""
    latencies = []
    for i, pieces in sorted(grouped.items()):
        arrived, _ = max(pieces, key=lambda piece: piece[1]["end"])
        latencies.append(arrived - voice.sent(clips[i].voiced_end_frame))
    return latencies


def word_errors_of(
    grouped: dict[int, list[tuple[float, dict[str, Any]]]], clips: list[PlayedClip]
) -> tuple[int, int]:
    """Word errors and reference words over all answers (a sanity check)."""
    errors = words = 0
    for i, clip in enumerate(clips):
        text = " ".join(event["text"] for _, event in grouped.get(i, []))
        e, w = word_errors(clip.answer.reference, text)
        errors, words = errors + e, words + w
    return errors, words


def anomaly_delays(candidate: BenchCandidate, video: TimedPhotos) -> tuple[list[float], list[str]]:
    """Two-person frame sent -> `multiple_persons` received, per episode; and the others."""
    switches = video.shown_at[0::2]  # show(TWO), show(ONE), show(TWO), …
    received = [(t, e) for t, e in candidate.timed("anomaly")]
    delays = []
    for i, switched in enumerate(switches):
        until = switches[i + 1] if i + 1 < len(switches) else math.inf
        hit = next((t for t, e in received if e["anomaly"] == "multiple_persons"
                    and switched <= t < until), None)
        delays.append(math.nan if hit is None else hit - switched)
    others = [f"{e['anomaly']} ({e['count']})" for _, e in received if e["anomaly"] != "multiple_persons"]
    return delays, others


async def media_session(args: argparse.Namespace, recording: bool) -> MediaRun:
    settings = {"INTERVIEWER": "1" if args.interviewer else "0", "RECORDING": "1" if recording else "0"}
    label = " ".join(f"{k}={v}" for k, v in settings.items())
    answers = [load_answer(key) for key in ANSWER_ORDER]
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        server = await ServerProcess.start(Path(tmp) / "data", settings)
        rss = RssSampler(server.pid)
        rss.mark("idle")
        rss.start()
        voice, video = TimedSpeech(), TimedPhotos(ONE_PERSON, fps=10)
        candidate = BenchCandidate(voice, video)
        try:
            async with aiohttp.ClientSession(base_url=server.url) as http:
                joined = time.monotonic()
                # With the interviewer on, a long plan: it must not close the interview.
                template_id = await create_template(server.data_dir)
                session_id = await join(http, candidate, {"template_id": template_id})
                join_s = time.monotonic() - joined
                rss.mark("models loaded")
                before = await scrape(http)
                cpu0, pg0 = cpu_seconds(psutil.Process(server.pid)), cpu_seconds(server.postgres(), with_children=True)
                client0 = time.process_time()
                started = time.monotonic()
                photos = asyncio.create_task(switch_photos(video, started), name="photos")
                clips = await play_answers(voice, answers, args.pause)
                await photos
                last = clips[-1]
                done = await candidate.until(
                    lambda: any(e["end"] >= last.voiced_end_s - 1.0 for e in candidate.of("transcript")),
                    timeout=30,
                )
                if not done:
                    print("  (the last answer's transcript did not arrive within 30 s)")
                after = await scrape(http)
                cpu1, pg1 = cpu_seconds(psutil.Process(server.pid)), cpu_seconds(server.postgres(), with_children=True)
                client_cpu = time.process_time() - client0
                rss.mark("end")
                ended_s = await finish(http, candidate, session_id)
        finally:
            await candidate.close()
            shutdown_s = await server.stop()
            await rss.stop()
        grouped = transcripts_by_clip(candidate, clips, args.pause)
        delays, others = anomaly_delays(candidate, video)
        delta = after.since(before)
        return MediaRun(
            label=label,
            wall_s=after.at - before.at,
            delta=delta,
            clips=clips,
            transcript_latency=final_latencies(grouped, clips, voice),
            anomaly_delays=delays,
            unexpected_anomalies=others,
            server_cpu_s=delta.value("process_cpu_seconds_total") or cpu1 - cpu0,
            postgres_cpu_s=pg1 - pg0,
            client_cpu_s=client_cpu,
            rss=rss,
            startup_s=server.started_in_s,
            join_s=join_s,
            ended_s=ended_s,
            shutdown_s=shutdown_s,
            word_errors=word_errors_of(grouped, clips),
            problems=server.problems(),
        )


# -- reporting ----------------------------------------------------------------------------


def print_run(run: MediaRun) -> None:
    d, cores = run.delta, psutil.cpu_count() or 1
    speech = sum(c.answer.voiced_end_s for c in run.clips)
    print(f"\n== one session, {run.label} ==")
    print(f"server ready in {run.startup_s:.1f}s; offer -> connected (models load here) {run.join_s:.1f}s; "
          f"measured {run.wall_s:.1f}s;\n"
          f"'end' -> final row stored {run.ended_s:.1f}s; SIGTERM -> exit {run.shutdown_s:.1f}s")
    print(f"audio: {len(run.clips)} answers, {speech:.1f}s of speech; video 640x480 at 10 fps")
    print("last voiced frame -> final transcript")
    print(f"  client, per answer:              {spread(run.transcript_latency)}")
    print(f"  server transcript_latency/piece: {d.histogram('interview_transcript_latency_seconds').describe()}")
    print(f"  server asr_seconds per piece:    {d.histogram('interview_asr_seconds').describe()}")
    errors, words = run.word_errors
    print(f"  WER over all answers (sanity):   {errors / max(words, 1):.3f} ({errors}/{words} words)")
    detect = d.histogram("interview_detect_seconds")
    print(f"detector per sampled frame: {detect.describe(1000, 'ms')}")
    print(f"  samples analysed {d.value('interview_video_samples_total', result='analysed'):.0f}, "
          f"missed while busy {d.value('interview_video_samples_total', result='dropped'):.0f}")
    shown = ", ".join("none" if math.isnan(x) else f"{x:.2f}s" for x in run.anomaly_delays)
    print(f"two-person frame sent -> 'anomaly' received, per episode: {shown}")
    if run.unexpected_anomalies:
        print(f"  other anomalies: {', '.join(run.unexpected_anomalies)}")
    asr, tts = d.histogram("interview_asr_seconds").total, d.histogram("interview_tts_seconds").total
    print(f"CPU over {run.wall_s:.1f}s ({cores} cores; % of one core):")
    rest = run.server_cpu_s - asr - detect.total - tts
    rows = [
        ("server process (process_cpu_seconds_total)", run.server_cpu_s),
        ("  ASR jobs (asr_seconds sum, wall)", asr),
        ("  detection jobs (detect_seconds sum, wall)", detect.total),
        ("  TTS jobs (tts_seconds sum, wall)", tts),
        ("  the rest: RTP, decoding, VAD, recording, loop", rest),
        ("embedded PostgreSQL", run.postgres_cpu_s),
        ("benchmark client (this process)", run.client_cpu_s),
    ]
    for name, seconds in rows:
        print(f"  {name:47} {seconds:7.2f}s  {100 * seconds / run.wall_s:6.1f}%")
    if rest < 0:
        print("  (the job sums exceed the process: they are wall time, waiting for a core included)")
    print(f"server RSS: {run.rss.describe()}")
    frames_in = d.value("interview_frames_received_total", kind="audio")
    print(f"frames: audio in {frames_in:.0f}, dropped {d.value('interview_frames_dropped_total', kind='audio'):.0f}; "
          f"video in {d.value('interview_frames_received_total', kind='video'):.0f}; "
          f"speech pieces dropped {d.value('interview_speech_pieces_dropped_total'):.0f}")
    print_problems(run.problems)


def print_problems(problems: list[str]) -> None:
    print(f"server log: {len(problems)} warning/error line(s)")
    for line in dict.fromkeys(re.sub(r"^\S+ \S+ ", "", p) for p in problems[:50]):
        print(f"  {line[:200]}")


def print_recording_cost(off: MediaRun, on: MediaRun) -> None:
    rate_off, rate_on = off.server_cpu_s / off.wall_s, on.server_cpu_s / on.wall_s
    mib = 1 / (1024 * 1024)
    peak_off, peak_on = off.rss.session_peak(), on.rss.session_peak()
    print("\n== recording: RECORDING=1 minus RECORDING=0 (two separate runs; noisy machine) ==")
    print(f"server CPU: {100 * rate_off:.1f}% -> {100 * rate_on:.1f}% of one core "
          f"= {100 * (rate_on - rate_off):+.1f} points")
    print(f"server RSS peak: {peak_off * mib:.0f} -> {peak_on * mib:.0f} MiB = {(peak_on - peak_off) * mib:+.0f} MiB")


async def main_async(args: argparse.Namespace) -> None:
    modes = {"both": (False, True), "0": (False,), "1": (True,)}[args.recording]
    print(f"machine: {psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; interviewer "
          f"{'on' if args.interviewer else 'off'}; answers {', '.join(ANSWER_ORDER)}, "
          f"{args.pause:g}s pauses; two persons at {', '.join(f'{t:g}' for t in TWO_PERSON_AT_S)}s "
          f"for {TWO_PERSON_FOR_S:g}s each")
    runs = []
    for recording in modes:
        run = await media_session(args, recording)
        print_run(run)
        runs.append(run)
    if len(runs) == 2:
        print_recording_cost(*runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--recording", choices=("both", "0", "1"), default="both")
    parser.add_argument("--interviewer", action="store_true", help="keep the AI interviewer on")
    parser.add_argument("--pause", type=float, default=2.5, help="seconds of silence after each answer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not ONE_PERSON.is_file() or not TWO_PERSONS.is_file():
        sys.exit(f"photos not found under {PHOTOS}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
