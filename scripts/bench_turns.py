"""Turn latency: the candidate's last voiced frame -> the interviewer's first audio.

One interview against a real server process (`.venv/bin/python server.py`,
PORT=0, a fresh DATA_DIR, ICE_LOOPBACK_ONLY=1, the embedded PostgreSQL, the
interviewer and recording on as deployed). A job template with 24 short
questions is inserted in the embedded database and the session is created
from it. The candidate (a real aiortc peer in this process, sending a photo
of one person at 10 fps) answers with a recorded LibriVox clip each time the
server's `state` becomes `listening`; the short clip (7 words) draws the
offline engine's follow-up, so both kinds of reply are measured.

Engines: `offline` (the structured interviewer) or `gemini`, through the
real google-genai SDK against `testing/gemini_stub.py` in this process: each
reply streams after `--first-token-ms` (default 400), then a chunk of three
words every `--chunk-ms` (default 40).

Per turn, from the client's side (monotonic clock of this process; the
data channel's own delay is printed, ~1 ms on loopback):
  eot     last voiced frame sent -> `state: thinking` received (end of turn)
  text    last voiced frame sent -> the answer's last transcript received
          (includes the VAD's 600 ms end silence; overlaps eot)
  reply   `thinking` -> `speaking` received; the server sends `speaking` when
          the reply's first audio frame goes to aiortc, so this is the engine
          wording the first sentence, its synthesis, and the wait for the
          next 20 ms slot of the outgoing track
  to ear  `speaking` -> first audible interviewer frame received (RTP,
          jitter buffer, Opus, and the voice's own leading silence)
  total   last voiced frame sent -> first audible interviewer frame received
The engine alone is only visible on the server: its histograms over the same
turns are printed too: interview_turn_latency_seconds (last voiced frame's
arrival -> first reply frame sent), interview_llm_first_sentence_seconds,
interview_asr_seconds, interview_transcript_latency_seconds and
interview_tts_seconds. Figures only; nothing is asserted.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_turns.py --engine offline|gemini
       [--turns 20] [--turn-detection smart-turn|silence] [--end-of-turn 0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped]
from bench_media import (
    ONE_PERSON,
    QUESTIONS,
    Answer,
    BenchCandidate,
    PlayedClip,
    RssSampler,
    Scrape,
    ServerProcess,
    TimedPhotos,
    TimedSpeech,
    create_template,
    finish,
    join,
    load_answer,
    print_problems,
    scrape,
    spread,
)
from testing import Chunk, GeminiStub, Reply

GREETING = "Hello, I'm Serin, and I'll be your interviewer today. Let's begin."
ACKS = ("Thanks, that's helpful.", "I see, thank you.", "Got it, thanks.",
        "Thank you for walking me through that.")
# 13, 7 (a follow-up from the offline engine), 19 and 22 words.
ANSWER_ORDER = ("0890", "0880", "0920", "0870")
WORDS_PER_CHUNK = 3


# -- the Gemini stand-in -------------------------------------------------------------


def streamed(text: str, first_token_s: float, chunk_s: float) -> Reply:
    """`text` as Gemini streams it: a few words per chunk, the first one late."""
    words = text.split(" ")
    pieces = [" ".join(words[i:i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]
    chunks = tuple(
        Chunk(piece + (" " if i < len(pieces) - 1 else ""), first_token_s if i == 0 else chunk_s)
        for i, piece in enumerate(pieces)
    )
    return Reply(chunks)


def gemini_replies(count: int, first_token_s: float, chunk_s: float) -> list[Reply]:
    """The greeting with the first question, then an acknowledgement and a question each."""
    texts = [f"{GREETING} {QUESTIONS[0]}"]
    texts += [f"{ACKS[i % len(ACKS)]} {QUESTIONS[i % len(QUESTIONS)]}" for i in range(1, count)]
    return [streamed(text, first_token_s, chunk_s) for text in texts]


# -- turns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    answer: Answer
    heard: str  # the answer's transcript
    reply: str  # the interviewer's first sentence
    end_of_turn_s: float
    transcript_s: float
    reply_s: float  # thinking -> speaking: engine + TTS + the next frame slot
    to_ear_s: float  # speaking -> audible
    total_s: float
    cut_short: bool  # the turn ended before the clip's speech did


def measure(candidate: BenchCandidate, voice: TimedSpeech, clip: PlayedClip) -> Turn:
    """The turn that `clip` answered, from the stamped events."""
    start = voice.sent(clip.start_frame)
    voiced = voice.sent(clip.voiced_end_frame)
    states = [(t, e["state"]) for t, e in candidate.timed("state") if t > start]
    thinking = next((t for t, s in states if s == "thinking"), math.nan)
    speaking = next((t for t, s in states if s == "speaking" and t >= thinking), math.nan)
    heard = [(t, e["text"]) for t, e in candidate.timed("transcript") if start < t <= thinking]
    reply = next((e["text"] for t, e in candidate.timed("interviewer") if t >= thinking), "")
    audible = candidate.first_audible_after(max(thinking, voiced))
    return Turn(
        answer=clip.answer,
        heard=" ".join(text for _, text in heard),
        reply=reply,
        end_of_turn_s=thinking - voiced,
        transcript_s=(heard[-1][0] - voiced) if heard else math.nan,
        reply_s=speaking - thinking,
        to_ear_s=audible - speaking,
        total_s=audible - voiced,
        cut_short=thinking < voiced,
    )


def reached(candidate: BenchCandidate, state: str, count: int) -> bool:
    states = [e["state"] for e in candidate.of("state")]
    return states.count(state) >= count or "ended" in states


async def converse(
    candidate: BenchCandidate, voice: TimedSpeech, http: aiohttp.ClientSession, wanted: int
) -> tuple[list[Turn], list[float], Scrape]:
    """Answer each question when the server listens.

    Returns the turns, data-channel pings (one per answer, sent as it starts)
    and /metrics as it was before the first answer.
    """
    answers = itertools.cycle(load_answer(key) for key in ANSWER_ORDER)
    if not await candidate.until(lambda: reached(candidate, "listening", 1), timeout=120):
        raise RuntimeError("the interviewer never started listening")
    before = await scrape(http)
    turns: list[Turn] = []
    pings: list[float] = []
    for listened in itertools.count(1):
        if len(turns) >= wanted or "ended" in (e["state"] for e in candidate.of("state")):
            break
        clip = voice.play(next(answers))
        pings.append(await candidate.ping())
        replied = await candidate.until(functools.partial(reached, candidate, "listening", listened + 1), 120)
        turns.append(measure(candidate, voice, clip))
        if not replied:
            print(f"  (no reply to turn {len(turns)} within 120 s)")
            break
    return turns, pings, before


# -- one interview ----------------------------------------------------------------------------


@dataclass
class TurnRun:
    label: str
    turns: list[Turn]
    pings: list[float]
    delta: Scrape
    wall_s: float
    server_cpu_s: float
    rss: RssSampler
    ended_s: float
    problems: list[str]
    stub: GeminiStub | None


async def interview(args: argparse.Namespace) -> TurnRun:
    settings = {"INTERVIEWER": "1", "INTERVIEWER_GREETING": GREETING, "NUDGE_S": "60"}
    if args.end_of_turn is not None:
        settings["END_OF_TURN_S"] = f"{args.end_of_turn:g}"
    settings["TURN_DETECTION"] = args.turn_detection
    stub = None
    if args.engine == "gemini":
        stub = GeminiStub()
        await stub.start()
        stub.script(*gemini_replies(args.turns + 10, args.first_token_ms / 1000, args.chunk_ms / 1000))
        settings.update(GEMINI_API_KEY="bench-key", GEMINI_BASE_URL=stub.base_url)
    label = f"engine={args.engine} TURN_DETECTION={args.turn_detection}"
    if args.turn_detection == "silence":
        label += f" END_OF_TURN_S={args.end_of_turn or 1.2:g}"
    if stub is not None:
        label += f" first token {args.first_token_ms:g} ms, {args.chunk_ms:g} ms/chunk"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-turns-") as tmp:
            server = await ServerProcess.start(Path(tmp) / "data", settings)
            rss = RssSampler(server.pid)
            rss.mark("idle")
            rss.start()
            voice = TimedSpeech()
            candidate = BenchCandidate(voice, TimedPhotos(ONE_PERSON, fps=10) if args.video else None)
            try:
                async with aiohttp.ClientSession(base_url=server.url) as http:
                    template_id = await create_template(server.data_dir)
                    session_id = await join(http, candidate, {"template_id": template_id})
                    rss.mark("connected")
                    turns, pings, before = await converse(candidate, voice, http, args.turns)
                    after = await scrape(http)
                    rss.mark("end")
                    ended_s = await finish(http, candidate, session_id)
            finally:
                await candidate.close()
                await server.stop()
                await rss.stop()
            delta = after.since(before)
            return TurnRun(label, turns, pings, delta, after.at - before.at,
                           delta.value("process_cpu_seconds_total"), rss, ended_s,
                           server.problems(), stub)
    finally:
        if stub is not None:
            await stub.close()


# -- reporting ------------------------------------------------------------------------------


def print_turns(run: TurnRun) -> None:
    print(f"\n== {len(run.turns)} turns, {run.label} ==")
    print(f"{'#':>3} {'answer':6} {'words':>5} {'eot':>6} {'text':>6} {'reply':>6} {'to ear':>6} "
          f"{'total':>6}  interviewer's first sentence")
    for i, t in enumerate(run.turns, start=1):
        words = len(t.heard.split())
        mark = " (cut short)" if t.cut_short else ""
        print(f"{i:3} {t.answer.name:6} {words:5} {t.end_of_turn_s:6.2f} {t.transcript_s:6.2f} "
              f"{t.reply_s:6.2f} {t.to_ear_s:6.2f} {t.total_s:6.2f}  {t.reply[:44]!r}{mark}")
    whole = [t for t in run.turns if not t.cut_short]
    print(f"client side, from the last voiced frame sent (turns cut short left out: "
          f"{len(run.turns) - len(whole)}):")
    for name, values in (
        ("eot: end of turn (thinking)", [t.end_of_turn_s for t in whole]),
        ("text: final transcript", [t.transcript_s for t in whole]),
        ("reply: thinking -> speaking", [t.reply_s for t in whole]),
        ("to ear: speaking -> audible", [t.to_ear_s for t in whole]),
        ("total: first audible reply", [t.total_s for t in whole]),
    ):
        print(f"  {name:32} {spread([v for v in values if not math.isnan(v)])}")
    print(f"  {'data-channel ping round trip':32} {spread([p for p in run.pings if not math.isnan(p)])}")
    d = run.delta
    print("server histograms over the same turns (p50/p95 interpolated in buckets):")
    for name in ("interview_turn_latency_seconds", "interview_llm_first_sentence_seconds",
                 "interview_transcript_latency_seconds", "interview_asr_seconds",
                 "interview_tts_seconds"):
        print(f"  {name.removeprefix('interview_'):32} {d.histogram(name).describe()}")
    cores = psutil.cpu_count() or 1
    print(f"server CPU {run.server_cpu_s:.1f}s over {run.wall_s:.1f}s = "
          f"{100 * run.server_cpu_s / run.wall_s:.1f}% of one core ({cores} cores); RSS {run.rss.describe()}")
    print(f"candidate 'end' -> final row stored: {run.ended_s:.1f}s")
    if run.stub is not None:
        print(f"Gemini stub: {len(run.stub.requests)} requests, {run.stub.unscripted} unscripted")
    print_problems(run.problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--engine", choices=("offline", "gemini"), default="offline")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--end-of-turn", type=float, default=None,
                        help="END_OF_TURN_S for the server (its default: 1.2)")
    parser.add_argument("--turn-detection", choices=("smart-turn", "silence"), default="smart-turn",
                        help="TURN_DETECTION for the server (its default: smart-turn)")
    parser.add_argument("--first-token-ms", type=float, default=400)
    parser.add_argument("--chunk-ms", type=float, default=40)
    parser.add_argument("--no-video", dest="video", action="store_false",
                        help="audio only (default: a one-person photo at 10 fps)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"machine: {psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"template of {len(QUESTIONS)} questions; answers cycle {', '.join(ANSWER_ORDER)}; "
          f"video {'on' if args.video else 'off'}; started {time.strftime('%H:%M:%S')}")
    run = asyncio.run(interview(args))
    print_turns(run)


if __name__ == "__main__":
    main()
