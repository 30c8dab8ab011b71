"""The AI interviewer end to end over a real aiortc peer, offline engine, real voice.

The scripted candidate answers each question with a recorded LibriVox clip
when the interviewer starts listening, and records the interviewer's audio;
that audio is transcribed back with our own ASR and must match what the
interviewer said.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import numpy as np

from adapters.whisper import WhisperTranscriber, resolve_asr_model
from engine.resample import resample
from testing import Candidate, InterviewerEar, ScriptedSpeech, wer
from tests.conftest import MODEL_CACHE_DIR, SPEECH, AppFactory
from tests.test_media import assert_recording, stored_row

ANSWERS = [SPEECH / "sense_and_sensibility_01_austen_64kb-0870.wav",
           SPEECH / "sense_and_sensibility_01_austen_64kb-0890.wav"]
QUESTIONS = ["Tell me about the last system you designed.",
             "How do you handle a disagreement in your team?"]


async def test_offline_interview_end_to_end(make_client: AppFactory, db: asyncpg.Connection):
    client = await make_client(ice_loopback_only=True, keepalive_timeout_s=5.0,
                               interviewer=True, end_of_turn_s=1.0, nudge_s=30.0)
    template_id = await db.fetchval(
        "INSERT INTO job_templates (job_role, questions) VALUES ('Platform engineer', $1) "
        "RETURNING template_id", json.dumps(QUESTIONS))
    resp = await client.post("/sessions", json={"template_id": str(template_id)})
    sid = (await resp.json())["session_id"]
    voice = ScriptedSpeech()
    candidate = Candidate(voice, None, ear=InterviewerEar(keep_audio=True))
    try:
        await candidate.join(client, sid)
        for turn, answer in enumerate(ANSWERS, start=1):
            await wait_for_state(candidate, "listening", turn)
            voice.say(answer)
        row = await stored_row(db, sid, timeout=120)
    finally:
        await candidate.close()

    info = json.loads(row["session_information"])
    history = info["conversation_history"]
    assert [t["role"] for t in history] == ["assistant", "user", "assistant", "user", "assistant"]
    assert "I'm Serin" in history[0]["content"] and QUESTIONS[0] in history[0]["content"]
    assert QUESTIONS[1] in history[2]["content"] and "Goodbye" in history[4]["content"]
    for answer, turn in zip(ANSWERS, (history[1], history[3])):
        assert wer(answer.with_suffix(".txt").read_text(), turn["content"]) <= 0.2
    assert (info["llm_provider"], info["llm_model"]) == ("offline", "structured-v1")
    states = [e["state"] for e in candidate.of("state")]
    assert states[0] in ("thinking", "speaking") and states[-1] == "ended"
    spoken = [e["text"] for e in candidate.of("interviewer")]
    assert " ".join(spoken) == " ".join(t["content"] for t in history if t["role"] == "assistant")

    report = json.loads(row["Interview_report"])
    assert [q["question"] for q in report["questions"]][1].endswith(QUESTIONS[1])
    for entry in report["questions"]:
        assert entry["answer_duration_s"] > 3 and 60 < entry["words_per_minute"] < 300
        assert entry["answer_summary"]
    assert report["evaluation"] is None  # offline: facts only, no invented scores
    assert report["talk_time_s"]["interviewer"] > 10
    assert report["anomalies_summary"] == {"total": 0, "by_type": {}, "timestamps": []}

    # The recording holds the whole conversation, the interviewer's voice included.
    await assert_recording(client, row["recording_url"], min_seconds=30, video=False)

    # Round trip: what the candidate heard transcribes back to what was said.
    heard = candidate.ear.heard_audio()
    assert np.abs(heard).max() > 1000
    whisper = WhisperTranscriber(resolve_asr_model(None, MODEL_CACHE_DIR)[0])
    pcm16k = resample(heard, 48000, 16000).astype(np.float32) / 32768
    text = await asyncio.to_thread(lambda: whisper.transcribe(pcm16k).text)
    said = " ".join(t["content"] for t in history if t["role"] == "assistant")
    assert wer(said, text) <= 0.25, text


async def wait_for_state(candidate: Candidate, state: str, count: int, timeout: float = 60) -> None:
    async def reached() -> None:
        while sum(1 for e in candidate.of("state") if e["state"] == state) < count:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(reached(), timeout)
