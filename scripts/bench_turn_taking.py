"""Turn-taking on real speech: how soon a finished answer is taken as over,
and how often a thinking pause is, for three rules on the same events.

Answers, all built from tests/data/speech (LibriVox, real recorded speech):
- finished: the four clips, longer.wav, and longer.wav up to each of its
  sentence ends;
- paused: each clip cut at every word gap inside a sentence (faster-whisper
  word times; the quietest 10 ms within 80 ms of the word's end), with a
  thinking pause of 1.0, 1.5, 2.0 or 2.5 s of the clip's own room tone
  inserted there, then the rest of the clip.

Each answer is fed 20 ms at a time, faster than real time, through the
server's own parts: the VAD (engine.vad, Silero v6), the turn probe
(engine.turns.TurnProbe on Smart Turn v3.2) and Whisper (the committed
transcriber, ASR_MODEL and ASR_ENCODER as set, default the server's: base,
fit; and its draft for speculative text). Every model call is timed on this machine and the time
is added to when its result exists, so a decision never precedes the text
or the probability it needs. Then, on the same events:

(a) fixed silence (TURN_DETECTION=silence): END_OF_TURN_S 1.2 s after the
    last voiced frame, +0.8 s under 8 words, +0.6 s without final
    punctuation, once the committed transcript is in (0.6 s VAD end
    silence + ASR);
(b) Smart Turn the way pipecat uses it by default: asked once when its VAD
    stops (0.2 s); P > 0.5 ends the turn once the text is in (transcribed at
    that stop); otherwise its 3 s stop_secs;
(c) ours (engine.turns.judge, the server's default): asked at 0.2, 0.4,
    0.7, 1.0, 1.5, 2.0, 2.5 s; the draft transcript at 0.2 s, then the
    committed one (the cues of both count); the ceiling TURN_CEILING_S.
    Judged again on the same events for each of --also-thresholds.

"end" is the silence, in seconds after the last voiced frame, at which the
rule ends the turn; the interviewer's reply (wording, synthesis, network)
comes on top: scripts/bench_turns.py measures that over a real peer. A
cut-in is a turn ended during the pause.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_turn_taking.py [--threshold 0.9]
       [--ceiling 3.0] [--encoder pad30|fit] [--save-events F | --events F]

--save-events keeps the replay's events; --events judges saved events again
(a rule change is judged on the very same model outputs, in seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import wave
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from adapters.silero import SileroVadModel
from adapters.smart_turn import SmartTurnModel
from adapters.whisper import WhisperSettings, WhisperTranscriber, resolve_asr_model
from config import Config
from engine.turns import EndOfTurnSettings, TurnDecision, TurnEstimate, TurnProbe, judge
from engine.vad import (
    SpeechCut, SpeechEnded, SpeechPaused, SpeechStarted, VadSettings, VadState, VoiceActivityDetector,
)

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"
CLIPS = ("0870", "0880", "0890", "0920")
PAUSES = (1.0, 1.5, 2.0, 2.5)
CHUNK = 320  # 20 ms
RATE = 16000
TAIL_S = 3.6  # silence after a finished answer: past every rule's ceiling


def load(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def room_tone(clip: np.ndarray, seconds: float) -> np.ndarray:
    """The clip's own background before its first word, repeated."""
    return np.resize(clip[: int(0.12 * RATE)], int(seconds * RATE))


def quiet_point(pcm: np.ndarray, at_s: float) -> int:
    centre = int(at_s * RATE)
    starts = range(max(0, centre - 1280), min(len(pcm) - 160, centre + 1280), 160)
    return min(starts, key=lambda i: float(np.sum(pcm[i:i + 160] ** 2))) + 80


@dataclass
class Answer:
    name: str
    pcm: np.ndarray
    pause_at_s: float | None = None  # where the thinking pause starts (None: finished)
    pause_s: float = 0.0


def word_times(whisper: WhisperTranscriber, pcm: np.ndarray) -> list[tuple[str, float]]:
    segments, _ = whisper._model.transcribe(pcm, language="en", beam_size=1, word_timestamps=True)
    return [(w.word.strip(), w.end) for s in segments for w in (s.words or [])]


def answers(whisper: WhisperTranscriber) -> list[Answer]:
    out: list[Answer] = []
    longer = load(SPEECH / "longer.wav")
    out.append(Answer("longer", np.concatenate([longer, room_tone(longer, TAIL_S)])))
    for word, end in word_times(whisper, longer)[:-1]:
        if word.endswith((".", "?", "!")) and word.lower() not in ("mr.", "mrs."):
            cut = quiet_point(longer, end)
            out.append(Answer(f"longer<{end:.1f}", np.concatenate([longer[:cut], room_tone(longer, TAIL_S)])))
    for clip in CLIPS:
        pcm = load(SPEECH / f"sense_and_sensibility_01_austen_64kb-{clip}.wav")
        out.append(Answer(clip, np.concatenate([pcm, room_tone(pcm, TAIL_S)])))
        for i, (word, end) in enumerate(word_times(whisper, pcm)[:-1]):
            if end < 0.6 or (word.endswith((".", "?", "!")) and word.lower() not in ("mr.", "mrs.")):
                continue
            cut = quiet_point(pcm, end)
            for pause in PAUSES:
                audio = np.concatenate([pcm[:cut], room_tone(pcm, pause), pcm[cut:],
                                        room_tone(pcm, TAIL_S)])
                out.append(Answer(f"{clip}/{i}", audio, cut / RATE, pause))
    return out


@dataclass
class Events:
    """What the server's parts produced for one answer, in stream seconds."""

    estimates: list[tuple[float, TurnEstimate]] = field(default_factory=list)
    drafts: list[tuple[float, str, float]] = field(default_factory=list)  # ready, text, last voiced
    stops: list[tuple[float, str, float]] = field(default_factory=list)  # committed text at a 0.2 s stop
    finals: list[tuple[float, str, float, bool]] = field(default_factory=list)  # ready, text, lv, done
    voice_on: list[float] = field(default_factory=list)


class Armed:
    """Smart Turn, asked only around the pause being measured (the rest cannot
    change the result, and the model is the costly part of this replay)."""

    def __init__(self, model: SmartTurnModel) -> None:
        self.model = model
        self.armed = False

    def probability(self, audio: np.ndarray) -> float:
        return self.model.probability(audio) if self.armed else 0.0


def run(answer: Answer, vad_model: SileroVadModel, probe_model: SmartTurnModel,
        committed: WhisperTranscriber, draft: WhisperTranscriber, settings: EndOfTurnSettings,
        vad_settings: VadSettings | None = None) -> Events:
    vad = VoiceActivityDetector(vad_model, vad_settings)
    armed = Armed(probe_model)
    # Every scheduled ask, even after a doubtful one (the server spares
    # those): the "not shipped" variants below judge the later answers too.
    probe = TurnProbe(armed, settings, stop_when_doubtful=False)
    # From just before the pause being measured (finished: the last 1.5 s of speech).
    arm_at = (answer.pause_at_s - 0.4 if answer.pause_at_s is not None
              else len(answer.pcm) / RATE - TAIL_S - 1.5)
    ev = Events()
    busy_until = 0.0  # one ASR thread, as in the server
    speaking = False
    for start in range(0, len(answer.pcm) - CHUNK + 1, CHUNK):
        chunk = answer.pcm[start:start + CHUNK]
        new = vad.feed(chunk)
        now = vad.stream_time
        armed.armed = now >= arm_at
        began = next((e.at for e in new if isinstance(e, SpeechStarted)), None)
        in_speech = vad.state in (VadState.SPEAKING, VadState.STARTING)
        for est in map(probe.answer, probe.feed(chunk, last_voiced_at=vad.last_voiced_at,
                                                speaking=in_speech, speech_started_at=began)):
            if armed.armed:
                ev.estimates.append((now + est.model_s, est))
        if (vad.state is VadState.SPEAKING) != speaking:
            speaking = not speaking
            if speaking:
                ev.voice_on.append(now)
        for e in new:
            if isinstance(e, SpeechPaused):
                d = draft.transcribe(e.audio)
                busy_until = max(busy_until, now) + d.elapsed_s
                ev.drafts.append((busy_until, d.text.strip(), e.last_voiced_at))
                if armed.armed:
                    c = committed.transcribe(e.audio)  # (b): text at its VAD's 0.2 s stop
                    ev.stops.append((now + c.elapsed_s, c.text.strip(), e.last_voiced_at))
            elif isinstance(e, (SpeechCut, SpeechEnded)):
                c = committed.transcribe(e.audio)
                busy_until = max(busy_until, now) + c.elapsed_s
                ev.finals.append((busy_until, c.text.strip(), e.last_voiced_at, isinstance(e, SpeechEnded)))
    return ev


# -- the three rules over one pause ------------------------------------------------------------


def fixed_silence(ev: Events, lv: float, prefix: str) -> float | None:
    """The committed pieces from this pause's utterance on, up to the first
    that ends an utterance; then END_OF_TURN_S and its graces."""
    texts: list[str] = []
    last_voiced = lv
    for ready, text, voiced, done in ev.finals:
        if voiced < lv - 0.05:
            continue
        if text:
            texts.append(text)
            last_voiced = max(last_voiced, voiced)
        if done:
            answer = " ".join([prefix, *texts]).strip()
            wait = 1.2 + (0.8 if len(answer.split()) < 8 else 0.0)
            wait += 0.0 if answer.rstrip().endswith((".", "?", "!")) else 0.6
            return max(ready, last_voiced + wait)
    return None


def pipecat_default(ev: Events, lv: float, prefix: str) -> float | None:
    first = next(((t, e) for t, e in ev.estimates if abs(t - e.model_s - e.silence_s - lv) < 0.05), None)
    stop = next((ready for ready, _, voiced in ev.stops if abs(voiced - lv) < 0.05), None)
    if first is None or stop is None:
        return None
    t, est = first
    return max(t, stop) if est.probability > 0.5 else max(lv + 3.0, stop)


Judge = Callable[..., TurnDecision]


def complete_text_at(silence: float) -> Judge:
    """Not shipped, judged for comparison: an answer the text finds complete
    ends at `silence` even when the model's answers were low."""
    def variant(settings: EndOfTurnSettings, **kw: object) -> TurnDecision:
        d = judge(settings, **kw)  # type: ignore[arg-type]
        if d.rule == "model-open" and float(kw["silence_s"]) >= silence:  # type: ignore[arg-type]
            return TurnDecision(True, "complete-text", d.silence_s, d.probability, d.cues)
        return d
    return variant


def confident_short_at(silence: float) -> Judge:
    """Not shipped, judged for comparison: a short answer ends at `silence`
    when every model answer of the pause was at least the threshold."""
    def variant(settings: EndOfTurnSettings, **kw: object) -> TurnDecision:
        d = judge(settings, **kw)  # type: ignore[arg-type]
        seen: list[TurnEstimate] = kw["estimates"]  # type: ignore[assignment]
        if (d.rule == "short" and seen and float(kw["silence_s"]) >= silence  # type: ignore[arg-type]
                and all(e.probability >= settings.threshold for e in seen)):
            return TurnDecision(True, "confident-short", d.silence_s, d.probability, d.cues)
        return d
    return variant


def ours(ev: Events, lv: float, prefix: str, settings: EndOfTurnSettings,
         judged_by: Judge = judge) -> float | None:
    pause = [(t, e) for t, e in ev.estimates if abs(t - e.model_s - e.silence_s - lv) < 0.05]
    drafts = [(ready, text) for ready, text, voiced in ev.drafts if abs(voiced - lv) < 0.05]
    finals = [(ready, text) for ready, text, voiced, _ in ev.finals if abs(voiced - lv) < 0.05]
    moments = sorted({t for t, _ in pause} | {t for t, _ in drafts} | {t for t, _ in finals}
                     | {lv + settings.ceiling_s})
    for t in moments:
        committed = [text for ready, text in finals if ready <= t]
        drafted = [text for ready, text in drafts if ready <= t]
        texts = committed or drafted
        if not texts:
            continue
        seen = [e for ready, e in pause if ready <= t]
        decision = judged_by(settings, silence_s=t - lv + 1e-9, estimates=seen,
                         answer=f"{prefix} {texts[-1]}".strip(),
                         draft=f"{prefix} {drafted[-1]}".strip() if drafted else None)
        if decision.end:
            return t
    return None


def prefix_before(ev: Events, lv: float) -> str:
    """Committed text of pieces that ended before this pause's utterance."""
    return " ".join(text for _, text, voiced, _ in ev.finals if voiced < lv - 0.05)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_WORKER: dict[str, object] = {}


def _load_worker(model: str, encoder: Literal["fit", "pad30"], threshold: float,
                 ceiling: float, post_roll_ms: int) -> None:
    committed = WhisperTranscriber(model, WhisperSettings(encoder=encoder))
    _WORKER.update(committed=committed, draft=committed.draft(), vad=SileroVadModel(),
                   turn=SmartTurnModel(),
                   settings=EndOfTurnSettings(threshold=threshold, ceiling_s=ceiling),
                   vad_settings=VadSettings(post_roll_ms=post_roll_ms))


def _run_in_worker(answer: Answer) -> Events:
    w = _WORKER
    return run(answer, w["vad"], w["turn"], w["committed"], w["draft"], w["settings"],  # type: ignore[arg-type]
               w["vad_settings"])  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=EndOfTurnSettings().threshold)
    parser.add_argument("--also-thresholds", default="0.9,0.95",
                        help="(c) judged again on the same events with these TURN_THRESHOLDs")
    parser.add_argument("--ceiling", type=float, default=EndOfTurnSettings().ceiling_s)
    parser.add_argument("--model", default=None, help="ASR_MODEL (default: the server's)")
    parser.add_argument("--encoder", choices=("pad30", "fit"), default=WhisperSettings().encoder,
                        help="ASR_ENCODER (default: the server's)")
    parser.add_argument("--json", type=Path, help="write every answer's figures here")
    parser.add_argument("--jobs", type=int, default=2,
                        help="answers replayed at once, one process each (one thread each)")
    parser.add_argument("--save-events", type=Path,
                        help="keep every answer's model and transcript events here (pickle)")
    parser.add_argument("--events", type=Path,
                        help="judge the events saved by --save-events instead of replaying")
    parser.add_argument("--post-roll-ms", type=int, default=VadSettings().post_roll_ms,
                        help="the VAD's post-roll: silence before the draft starts (default: "
                        "the server's); (b) then stops its VAD there too")
    args = parser.parse_args()
    settings = EndOfTurnSettings(threshold=args.threshold, ceiling_s=args.ceiling)
    encoder: Literal["fit", "pad30"] = "fit" if args.encoder == "fit" else "pad30"
    model_path, model_label = resolve_asr_model(args.model, Config.from_env().model_cache_dir)
    committed = WhisperTranscriber(model_path, WhisperSettings(encoder=encoder))
    print(f"ASR {model_label} {committed.settings.decoding}; CPU {cpu_model()}")

    def our_rule(judged: EndOfTurnSettings) -> Callable[[Events, float, str], float | None]:
        return lambda ev, lv, prefix: ours(ev, lv, prefix, judged)

    rules: dict[str, Callable[[Events, float, str], float | None]] = {
        "(a) fixed silence": fixed_silence, "(b) pipecat default": pipecat_default,
        "(c) ours": our_rule(settings)}
    for other in filter(None, args.also_thresholds.split(",")):
        rules[f"(c) TURN_THRESHOLD={float(other):g}"] = our_rule(
            EndOfTurnSettings(threshold=float(other), ceiling_s=args.ceiling))
    # Two changes judged on the same events and not shipped (BENCHMARKS.md).
    for label, variant in (("complete text ends at the 2 s ask", complete_text_at(2.0)),
                           ("confident short answer ends at the 1 s ask",
                            confident_short_at(1.0))):
        rules[f"(c) + {label}"] = (
            lambda ev, lv, prefix, v=variant: ours(ev, lv, prefix, settings, v))
    finished: dict[str, list[float]] = {name: [] for name in rules}
    cut_ins: dict[str, dict[float, list[bool]]] = {name: {p: [] for p in PAUSES} for name in rules}
    rows = []
    # Paused answers whose rest the VAD never heard as speech (a last short
    # word after the pause): every rule with a ceiling "cuts in" on them.
    unheard: dict[float, int] = {p: 0 for p in PAUSES}
    if args.events is not None:
        replayed: list[tuple[Answer, Events]] = pickle.loads(args.events.read_bytes())
    else:
        todo = answers(committed)
        pool = ProcessPoolExecutor(args.jobs, initializer=_load_worker,
                                   initargs=(model_path, encoder, args.threshold, args.ceiling,
                                             args.post_roll_ms))
        replayed = list(zip(todo, pool.map(_run_in_worker, todo)))
        pool.shutdown()
        if args.save_events is not None:
            args.save_events.write_bytes(pickle.dumps(replayed))
    for answer, ev in replayed:
        if answer.pause_at_s is None:
            lv = [voiced for _, text, voiced, _ in ev.finals if text][-1]
            resume = math.inf
        else:
            # The pause's own last voiced frame, as the probe saw it at its first ask.
            lv = next((t - e.model_s - e.silence_s for t, e in ev.estimates
                       if t - e.model_s - e.silence_s > answer.pause_at_s - 0.4), math.nan)
            if math.isnan(lv) or lv > answer.pause_at_s + 0.3:
                print(f"{answer.name}: the VAD heard no pause at the cut", flush=True)
                continue
            resume = next((t for t in ev.voice_on if t > answer.pause_at_s), math.inf)
            unheard[answer.pause_s] += resume == math.inf
        prefix = prefix_before(ev, lv)
        row: dict[str, object] = {"answer": answer.name, "pause_s": answer.pause_s}
        for name, rule in rules.items():
            end = rule(ev, lv, prefix)
            ended = end is not None and end < resume
            row[name] = None if end is None else round(end - lv, 3)
            if answer.pause_at_s is None:
                finished[name].append(math.inf if end is None else end - lv)
            else:
                cut_ins[name][answer.pause_s].append(ended)
        rows.append(row)
        print(json.dumps(row), flush=True)
    drafts = [len(ev.drafts) for _, ev in replayed]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {cpu_model()}; "
          f"ASR_ENCODER={args.encoder}, TURN_THRESHOLD={args.threshold:g}, "
          f"TURN_CEILING_S={args.ceiling:g}, post-roll {args.post_roll_ms} ms; "
          f"drafts per answer {sum(drafts) / max(1, len(drafts)):.2f}")
    n_fin = len(next(iter(finished.values())))
    n_cut = len(next(iter(cut_ins.values()))[PAUSES[0]])
    print(f"\n| rule | end after a finished answer p50 / p95 (s), n={n_fin} | "
          + " | ".join(f"cut-ins, {p:g} s pause (n={n_cut})" for p in PAUSES) + " |")
    print("|---|---|" + "---|" * len(PAUSES))
    for name in rules:
        ends = finished[name]
        cells = [f"{sum(v)}/{len(v)} ({100 * sum(v) / max(1, len(v)):.0f} %)" for v in cut_ins[name].values()]
        print(f"| {name} | {pct(ends, 0.5):.2f} / {pct(ends, 0.95):.2f} | " + " | ".join(cells) + " |")
    print("| of which the VAD never heard the answer go on (a cut-in for any rule) | | "
          + " | ".join(f"{unheard[p]}/{n_cut}" for p in PAUSES) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
