"""The learned end of turn (engine/turns.py) over real peers and real speech.

Smart Turn v3.2 (models/), the real VAD and Whisper; the candidate is a real
aiortc peer playing recorded LibriVox speech. What is asserted is which rule
ended each turn and that a thinking pause was not taken for the end, never a
duration (the latency figures are in BENCHMARKS.md, from
scripts/bench_turn_taking.py).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack

from adapters.silero import SileroVadModel
from adapters.smart_turn import SmartTurnModel
from adapters.whisper import WhisperTranscriber, resolve_asr_model
from engine.arrays import Float32Array
from engine.ports import TranscriptResult
from engine.turns import EndOfTurnSettings, TurnEstimate, TurnProbe, judge, text_cues
from engine.vad import VadSettings, VoiceActivityDetector
from media import audio_track
from media.audio_track import AudioTranscriber, Transcript
from testing import Candidate, ScriptedSpeech, SpeechTrack
from tests.conftest import MODEL_CACHE_DIR, SPEECH, AppFactory
from tests.test_interview import wait_for_state
from tests.test_media import stored_row

CLIP = SPEECH / "sense_and_sensibility_01_austen_64kb-0890.wav"  # "Unless to be rather cold hearted ..."
CUT_S = 1.47  # after "Unless to be rather" (a word gap; faster-whisper word times: 1.02-1.46)
QUESTION = "How do you handle a disagreement in your team?"


def thinking_pause(path: Path, pause_s: float) -> Path:
    """The clip with a `pause_s` thinking pause of its own room tone inserted at CUT_S."""
    with wave.open(str(CLIP)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    cut = int(CUT_S * 16000)
    cut = cut - 800 + int(np.argmin([np.sum(pcm[i:i + 160].astype(float) ** 2)
                                     for i in range(cut - 800, cut + 800, 160)])) * 160
    room = np.resize(pcm[: int(0.12 * 16000)], int(pause_s * 16000))  # before the first word
    out = np.concatenate([pcm[:cut], room, pcm[cut:]])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(out.tobytes())
    return path


# -- the rule -----------------------------------------------------------------------


def test_text_cues_read_an_unfinished_answer() -> None:
    assert text_cues("Unless to be rather...", 8) == ("trails-off", "short")
    assert text_cues("I moved the team to the", 8) == ("no-final-punctuation", "open-word", "short")
    assert text_cues("We shipped it in two weeks and nobody was paged.", 8) == ()
    assert text_cues("Yes.", 8) == ("short",)


def test_judge_ends_on_the_model_only_when_text_and_model_agree() -> None:
    settings = EndOfTurnSettings(threshold=0.9, ceiling_s=3.0)
    done = "We shipped it in two weeks and nobody was paged."
    sure = [TurnEstimate(0.2, 0.97)]
    assert judge(settings, silence_s=0.25, estimates=sure, answer=done).rule == "model"
    assert judge(settings, silence_s=0.25, estimates=sure, answer=done).end
    # One low answer during this pause: only the ceiling ends it.
    doubt = [TurnEstimate(0.2, 0.4), TurnEstimate(0.4, 0.99)]
    assert not judge(settings, silence_s=0.45, estimates=doubt, answer=done).end
    assert judge(settings, silence_s=3.0, estimates=doubt, answer=done).rule == "ceiling"
    # Text that stops mid-sentence outweighs a confident model.
    open_text = judge(settings, silence_s=2.5, estimates=sure, answer="and then I moved the")
    assert (open_text.end, open_text.rule) == (False, "text-open")
    assert not judge(settings, silence_s=2.5, estimates=sure, answer="Yes.").end
    # The committed transcript closed the piece with a full stop; the draft of
    # the same audio heard it break off: still open.
    closed = "Unless to be rather cold hearted and rather selfish."
    held = judge(settings, silence_s=1.2, estimates=sure, answer=closed,
                 draft="Unless to be rather cold hearted and rather...")
    assert (held.end, held.rule, held.cues) == (False, "text-open", ("trails-off",))


class CountingModel:
    """Our own seam (engine.ports.TurnModel): records the audio it was asked about."""

    def __init__(self, probability: float = 0.9) -> None:
        self.asked: list[int] = []
        self.answer = probability

    def probability(self, audio: Float32Array) -> float:
        self.asked.append(len(audio))
        return self.answer


_CHUNK = np.zeros(320, np.float32)  # 20 ms


def _speak(probe: TurnProbe, start: float, seconds: float) -> float:
    """Feed `seconds` of speech from stream time `start`; the last voiced time."""
    frames = round(seconds / 0.02)
    for i in range(frames):
        assert probe.feed(_CHUNK, last_voiced_at=start + (i + 1) * 0.02, speaking=True,
                          speech_started_at=start if i == 12 else None) == []
    return start + frames * 0.02


def _pause(probe: TurnProbe, voiced: float, seconds: float) -> list[float]:
    """Feed `seconds` of silence; the silences the model was asked at."""
    asked: list[float] = []
    for _ in range(round(seconds / 0.02)):
        asked += [round(probe.answer(a).silence_s, 1)
                  for a in probe.feed(_CHUNK, last_voiced_at=voiced, speaking=False)]
    return asked


def test_the_probe_asks_at_each_scheduled_silence_once() -> None:
    model = CountingModel(0.9)
    probe = TurnProbe(model, EndOfTurnSettings(ask_at_s=(0.2, 0.7), ceiling_s=1.0))
    voiced = _speak(probe, 0.0, 1.0)
    assert _pause(probe, voiced, 1.2) == [0.2, 0.7]  # nothing at or past the ceiling
    assert all(n <= 8 * 16000 for n in model.asked)


def test_each_answer_says_which_pause_it_is_about() -> None:
    probe = TurnProbe(CountingModel(0.9), EndOfTurnSettings(ask_at_s=(0.2,), ceiling_s=1.0))
    voiced = _speak(probe, 0.0, 1.0)
    first = probe.pause
    asks = [a for _ in range(15) for a in probe.feed(_CHUNK, last_voiced_at=voiced, speaking=False)]
    assert [a.pause for a in asks] == [first] and probe.answer(asks[0]).pause == first
    voiced = _speak(probe, voiced + 0.3, 0.5)  # the candidate went on: a new pause to come
    assert probe.pause == first + 1
    asks = [a for _ in range(15) for a in probe.feed(_CHUNK, last_voiced_at=voiced, speaking=False)]
    assert [a.pause for a in asks] == [first + 1]


def test_the_probe_asks_no_more_once_its_answer_cannot_change_the_decision() -> None:
    settings = EndOfTurnSettings(threshold=0.8, ask_at_s=(0.2, 0.4, 0.7, 1.0), ceiling_s=2.0)
    model = CountingModel(0.3)
    probe = TurnProbe(model, settings)
    # "Not complete": judge() waits for the ceiling whatever comes next.
    voiced = _speak(probe, 0.0, 1.0)
    assert _pause(probe, voiced, 1.5) == [0.2]
    assert probe.spared == 3
    assert not judge(settings, silence_s=1.5, estimates=[TurnEstimate(0.2, 0.3)],
                     answer="We shipped it in two weeks and nobody was paged.").end
    # The candidate goes on: the next pause is asked about from its start.
    model.answer = 0.95
    voiced = _speak(probe, voiced + 1.5, 1.0)
    assert _pause(probe, voiced, 0.5) == [0.2, 0.4]
    # The listener took the turn: the rest of that pause is not asked about.
    probe.hold()
    assert _pause(probe, voiced, 1.0) == []
    assert probe.spared == 5
    # ... and a later answer is, again.
    voiced = _speak(probe, voiced + 1.5, 1.0)
    assert _pause(probe, voiced, 0.3) == [0.2]
    # Asking at every scheduled silence whatever the answers (the benchmark's way):
    every = TurnProbe(CountingModel(0.3), settings, stop_when_doubtful=False)
    voiced = _speak(every, 0.0, 1.0)
    assert _pause(every, voiced, 1.5) == [0.2, 0.4, 0.7, 1.0]


# -- over a real peer ------------------------------------------------------------------------


async def interview(make_client: AppFactory, db: asyncpg.Connection, answer: Path) -> dict:
    client = await make_client(ice_loopback_only=True, keepalive_timeout_s=5.0,
                               interviewer=True, nudge_s=30.0)
    template_id = await db.fetchval(
        "INSERT INTO job_templates (job_role, questions) VALUES ('Engineer', $1) "
        "RETURNING template_id", json.dumps([QUESTION]))
    resp = await client.post("/sessions", json={"template_id": str(template_id)})
    sid = (await resp.json())["session_id"]
    voice = ScriptedSpeech()
    candidate = Candidate(voice, None)
    try:
        await candidate.join(client, sid)
        await wait_for_state(candidate, "listening", 1)
        voice.say(answer)
        row = await stored_row(db, sid, timeout=120)
        metrics = await (await client.get("/metrics")).text()
    finally:
        await candidate.close()
    info: dict = json.loads(row["session_information"])
    info["report"] = json.loads(row["Interview_report"])
    info["metrics"] = metrics
    return info


def counter(metrics: str, name: str) -> float:
    (value,) = [float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith(f"{name} ")]
    return value


async def test_a_finished_answer_is_ended_by_the_model(make_client: AppFactory,
                                                       db: asyncpg.Connection) -> None:
    info = await interview(make_client, db, CLIP)
    users = [t["content"] for t in info["conversation_history"] if t["role"] == "user"]
    assert len(users) == 1 and "selfish" in users[0].lower()
    decision = info["turn_decisions"][0]
    assert decision["probability"] >= 0.8, json.dumps(decision)  # Smart Turn is sure
    if users[0].rstrip().endswith((".", "?", "!")):
        # The text ends the sentence: the model ends the turn, before the ceiling.
        assert decision["rule"] == "model", json.dumps(decision)
        assert decision["silence_s"] < 3.0
    else:
        # On a loaded machine the peer's audio can arrive late or concealed, and
        # base then wrote "ill-disposed," (seen under two busy cores): text that
        # trails off holds the turn open until the ceiling, as it should.
        assert decision["rule"] == "ceiling" and decision["cues"], json.dumps(decision)
    # Taken on the draft, then the committed transcript replaced it: the
    # answer's speech still counts for the question it answered.
    (question,) = info["report"]["questions"]
    assert question["answer_duration_s"] > 3 and 60 < question["words_per_minute"] < 300
    # The reply opens with an acknowledgement synthesized while the candidate
    # spoke (each sentence of this interview is said once: no other hit).
    assert counter(info["metrics"], "interview_tts_cache_warmed_total") >= 5
    assert counter(info["metrics"], "interview_tts_cache_hits_total") >= 1


async def test_a_two_second_thinking_pause_is_not_taken_for_the_end(
    make_client: AppFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    info = await interview(make_client, db, thinking_pause(tmp_path / "pause.wav", 2.0))
    users = [t["content"] for t in info["conversation_history"] if t["role"] == "user"]
    # One answer holding both halves: the interviewer waited through the pause.
    assert len(users) == 1, users
    assert "rather" in users[0].lower() and "selfish" in users[0].lower()
    assert len(info["turn_decisions"]) == 1


class BurstTrack(MediaStreamTrack):
    """All of a clip's 20 ms frames at once, then nothing: the VAD gets them in one batch."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self._frames = [pcm[i:i + 320] for i in range(0, len(pcm) - 319, 320)]
        self._sent = 0

    async def recv(self) -> av.AudioFrame:
        if self._sent == len(self._frames):
            await asyncio.Event().wait()  # silent for good, and not ended
        frame = av.AudioFrame.from_ndarray(self._frames[self._sent].reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = 16000, self._sent * 320
        frame.time_base = fractions.Fraction(1, 16000)
        self._sent += 1
        return frame


class Said:
    """Our own seam (engine.ports.Transcriber): the same words for any audio, at once."""

    def transcribe(self, audio: Float32Array) -> TranscriptResult:
        return TranscriptResult("Unless to be rather cold.", len(audio) / 16000, 0.0)


async def test_speech_between_two_pauses_inside_one_vad_batch_is_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pause, a word, pause, all in one VAD batch (a loaded VAD thread): the
    listener still hears the word, and no answer about the first pause (the
    model said "not complete" there, mid-sentence) counts for the second."""
    with wave.open(str(CLIP)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    cut, room = int(CUT_S * 16000), np.resize(pcm[: int(0.12 * 16000)], int(0.7 * 16000))
    word = pcm[cut:cut + int(0.5 * 16000)]  # "cold"
    tail = np.resize(room, int(2.5 * 16000))
    monkeypatch.setattr(audio_track, "_BATCH_FRAMES", 1000)
    voice: list[bool] = []
    estimates: list[TurnEstimate] = []
    model = CountingModel(0.3)
    probe = TurnProbe(model, EndOfTurnSettings(), stop_when_doubtful=False)
    with ThreadPoolExecutor(1) as asr, ThreadPoolExecutor(1) as vad, ThreadPoolExecutor(1) as turn:
        audio = AudioTranscriber(
            BurstTrack(np.concatenate([room, pcm[:cut], room, word, tail])),
            vad=VoiceActivityDetector(SileroVadModel()), transcriber=Said(), vad_executor=vad,
            asr_executor=asr, on_transcript=lambda _: None, name="burst", on_voice=voice.append,
            turn_probe=probe, on_turn_estimate=estimates.append, turn_executor=turn,
            max_frames=1000,
        )
        try:
            deadline = time.monotonic() + 20
            while audio.stats.frames_in < 270 or len(model.asked) < 6 or len(estimates) < 6:
                assert time.monotonic() < deadline, (audio.stats, model.asked, estimates)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            await audio.close()
    assert voice == [True, False]  # the word, though the batch began and ended out of speech
    # Asked about the second pause only (0.2 ... 2.0 s of silence), and told of it only.
    assert {e.pause for e in estimates} == {probe.pause}
    assert [round(e.silence_s, 1) for e in estimates][:6] == [0.2, 0.4, 0.7, 1.0, 1.5, 2.0]
    assert len(model.asked) == len(estimates)


@pytest.mark.parametrize(("pause_s", "after_s", "drafts", "taken"), [
    (0.3, 0.1, 0, 0),  # the pause is over; the one now is too short for a draft
    (0.3, 0.35, 1, 0),  # ... and the one now is long enough: a draft of it
    (0.8, 0.1, 1, 1),  # the pause ended the utterance in the batch: its piece takes its draft
])
async def test_a_draft_is_made_only_of_the_pause_the_candidate_is_in(
    monkeypatch: pytest.MonkeyPatch, pause_s: float, after_s: float, drafts: int, taken: int,
) -> None:
    """A pause, a word ("cold", 0.5 s) and a silence, all in one VAD batch."""
    with wave.open(str(CLIP)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    cut, room = int(CUT_S * 16000), np.resize(pcm[: int(0.12 * 16000)], 16000)
    # The post-roll is 0.2 s after the last voiced window: `after_s` 0.1 stays under it
    # (and is past the word's voiced end: the batch ends out of speech).
    audio_in = np.concatenate([room[:6400], pcm[:cut], room[:int(pause_s * 16000)],
                               pcm[cut:cut + 8000], room[:int(after_s * 16000)]])
    monkeypatch.setattr(audio_track, "_BATCH_FRAMES", 1000)
    got: list[Transcript] = []
    with ThreadPoolExecutor(1) as asr, ThreadPoolExecutor(1) as vad, ThreadPoolExecutor(1) as turn:
        audio = AudioTranscriber(
            BurstTrack(audio_in), vad=VoiceActivityDetector(SileroVadModel()), transcriber=Said(),
            vad_executor=vad, asr_executor=asr, on_transcript=got.append, name="burst",
            turn_probe=TurnProbe(CountingModel(0.3), EndOfTurnSettings()), turn_executor=turn,
            max_frames=1000,
        )
        try:
            deadline = time.monotonic() + 20
            while audio.stats.frames_in < len(audio_in) // 320 or audio.queue_loads()[
                    "audio_frames"].depth:
                assert time.monotonic() < deadline, audio.stats
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the batch's work, and its draft's report
            # Before close(): its flush would commit the last pause and take its draft.
            seen = (audio.stats.speculations, audio.stats.speculations_used)
            provisional = [t for t in got if t.provisional]
        finally:
            await audio.close()
    assert seen == (drafts, taken)
    assert len(provisional) == drafts - taken


# -- speculative transcription ------------------------------------------------------------------


class SlowDraft:
    """Our own seam (engine.ports.Transcriber): the real Whisper, answering late."""

    def __init__(self, inner: WhisperTranscriber, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def transcribe(self, audio: Float32Array) -> TranscriptResult:
        time.sleep(self.delay_s)
        return self.inner.transcribe(audio)


async def test_speculation_is_dropped_when_the_candidate_goes_on(
    tmp_path: Path, loop_errors: list[dict[str, object]]
) -> None:
    whisper = WhisperTranscriber(resolve_asr_model(None, MODEL_CACHE_DIR)[0])
    # The draft of the fragment is still running when speech resumes 1.5 s later.
    track = SpeechTrack(thinking_pause(tmp_path / "pause.wav", 1.5), lead_s=0.3)
    got: list[Transcript] = []
    estimates: list[TurnEstimate] = []
    with ThreadPoolExecutor(2) as asr, ThreadPoolExecutor(1) as vad:
        audio = AudioTranscriber(
            track, vad=VoiceActivityDetector(SileroVadModel()), transcriber=whisper,
            draft_transcriber=SlowDraft(whisper, 2.5), vad_executor=vad, asr_executor=asr,
            on_transcript=got.append, name="spec",
            turn_probe=TurnProbe(SmartTurnModel(), EndOfTurnSettings()),
            on_turn_estimate=estimates.append,
        )
        await asyncio.sleep(7.5)  # the clip, its pause, and the end silence
        await audio.close()
    assert audio.stats.speculations >= 2  # the thinking pause and the end
    provisional = [t for t in got if t.provisional]
    committed = [t for t in got if not t.provisional]
    # The pause's draft was dropped, never reported; the whole answer was committed.
    assert all(t.start != committed[0].start or t.end == committed[0].end for t in provisional)
    assert "selfish" in " ".join(t.text for t in committed).lower()
    # Asked from the first scheduled silence of a pause on.
    assert estimates and round(estimates[0].silence_s, 1) == 0.2
    # Cancelled work leaves no task behind.
    left = [t for t in asyncio.all_tasks() if "spec-audio" in t.get_name()]
    assert left == []


class SlowTurnModel:
    """Our own seam (engine.ports.TurnModel): the real Smart Turn, answering late."""

    def __init__(self, delay_s: float) -> None:
        self.inner = SmartTurnModel()
        self.delay_s = delay_s

    def probability(self, audio: Float32Array) -> float:
        time.sleep(self.delay_s)
        return self.inner.probability(audio)


async def test_an_answer_about_a_pause_the_candidate_spoke_after_is_not_reported(
    tmp_path: Path, loop_errors: list[dict[str, object]]
) -> None:
    """The model answers 2 s late: its answers about a 1 s thinking pause come
    after the candidate went on (by about 0.7 s or more), and must not count
    for the pause after."""
    whisper = WhisperTranscriber(resolve_asr_model(None, MODEL_CACHE_DIR)[0])
    loop = asyncio.get_running_loop()
    voice: list[tuple[float, bool]] = []
    received: list[tuple[float, TurnEstimate]] = []
    with ThreadPoolExecutor(1) as asr, ThreadPoolExecutor(1) as vad, \
            ThreadPoolExecutor(1, thread_name_prefix="turn") as turn:
        audio = AudioTranscriber(
            SpeechTrack(thinking_pause(tmp_path / "pause.wav", 1.0), lead_s=0.3),
            vad=VoiceActivityDetector(SileroVadModel()), transcriber=whisper,
            vad_executor=vad, asr_executor=asr, on_transcript=lambda _: None, name="late",
            on_voice=lambda on: voice.append((loop.time(), on)),
            turn_probe=TurnProbe(SlowTurnModel(2.0), EndOfTurnSettings()), turn_executor=turn,
            on_turn_estimate=lambda e: received.append((loop.time(), e)),
        )
        await asyncio.sleep(18.0)  # the answer, its pause, the end; the late answers
        await audio.close()
    ons = [at for at, on in voice if on]
    assert len(ons) >= 2, voice  # spoke, paused to think, went on
    last_off = max(at for at, on in voice if not on)
    # Every answer reported is about the last pause: none from before the voice came on again.
    assert received and all(at > last_off for at, _ in received), (voice, received)
    assert audio.stats.turn_asks > len(received)  # the thinking pause's were answered, dropped


async def test_a_taken_answer_is_committed_without_waiting_for_the_end_silence(
    loop_errors: list[dict[str, object]]
) -> None:
    """The turn ended on the draft: the utterance is final at once, from the draft.

    The VAD's end silence here is 30 s, so only `end_utterance` can commit the
    answer before the track is closed.
    """
    # The default: base, fitted, its own draft.
    whisper = WhisperTranscriber(resolve_asr_model(None, MODEL_CACHE_DIR)[0])
    got: list[Transcript] = []
    audio: AudioTranscriber | None = None
    asked_on: set[str] = set()

    class Recording(SmartTurnModel):
        def probability(self, audio: Float32Array) -> float:
            asked_on.add(threading.current_thread().name)
            return super().probability(audio)

    def on_transcript(transcript: Transcript) -> None:
        got.append(transcript)
        # The answer's end, its last word (a mid-answer pause would not end
        # the turn); a paused end that does not match is the VAD's test.
        if transcript.provisional and "disposed" in transcript.text.lower() and audio is not None:
            audio.end_utterance(transcript.end)  # what Conversation asks for, via the call

    with ThreadPoolExecutor(1) as asr, ThreadPoolExecutor(1) as vad, \
            ThreadPoolExecutor(1, thread_name_prefix="turn") as turn:
        audio = AudioTranscriber(
            SpeechTrack(CLIP, lead_s=0.3),
            vad=VoiceActivityDetector(SileroVadModel(), VadSettings(end_silence_ms=30_000)),
            transcriber=whisper, vad_executor=vad, asr_executor=asr,
            on_transcript=on_transcript, name="taken",
            turn_probe=TurnProbe(Recording(), EndOfTurnSettings()), turn_executor=turn,
        )
        for _ in range(100):  # the clip (3.9 s), then up to 10 s of silence
            await asyncio.sleep(0.1)
            if any(not t.provisional for t in got):
                break
        committed_before_close = [t for t in got if not t.provisional]
        await audio.close()
    provisional = [t for t in got if t.provisional]
    assert committed_before_close, got
    (final,) = committed_before_close
    assert final.utterance_done and final.speculative  # the draft's own result
    assert (final.start, final.end, final.text) == (
        provisional[-1].start, provisional[-1].end, provisional[-1].text)
    assert final.start < 0.5  # the whole answer, not its end
    assert "selfish" in final.text.lower() and "disposed" in final.text.lower()
    assert audio.stats.speculations_used == 1 and audio.stats.pieces == 1
    # The end-of-turn model ran on its own thread, never on the VAD's.
    assert audio.stats.turn_asks > 0 and asked_on and all(n.startswith("turn") for n in asked_on)
    left = [t for t in asyncio.all_tasks() if "taken-audio" in t.get_name()]
    assert left == []
