"""Turn-taking and the structured interviewer, driven through a small harness.

The `Voice` here is a local stand-in at our own seam: it "plays" each
sentence for a time proportional to its length and can be interrupted. The
end-to-end test over a real peer with the real voice is in test_interview.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from engine.anomaly import AnomalyRules, AnomalySettings
from engine.conversation import Conversation, ConversationState, Spoken, TurnSettings
from engine.interview import Interview
from engine.interviewer import (
    InterviewerEngine,
    InterviewPlan,
    MoveKind,
    StructuredInterviewer,
    default_plan,
)
from engine.session import InterviewSession
from engine.turns import EndOfTurnSettings, TurnEstimate
from media.wire import encode

FAST = TurnSettings(end_of_turn_s=0.3, short_answer_grace_s=0.1, mid_sentence_grace_s=0.1,
                    barge_in_s=0.6, vad_confirm_s=0.25, nudge_s=0.6, max_minutes=20)
LONG_ANSWER = ("I led the migration of our billing system to PostgreSQL, planned the cut-over "
               "with the team, wrote the data checks, and we moved forty million rows in one night.")


class StandInVoice:
    """Plays 20 ms per word; records what it was asked to say and when it stopped."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.stopped_at: float | None = None
        self._stop = asyncio.Event()

    def interrupt(self) -> None:
        self.stopped_at = asyncio.get_running_loop().time()
        self._stop.set()

    async def say(self, sentences: AsyncIterator[str],
                  on_start: Callable[[str], None] | None = None) -> Spoken:
        self._stop.clear()
        loop = asyncio.get_running_loop()
        first, played, interrupted = None, [], False
        async for sentence in sentences:
            self.said.append(sentence)
            if on_start is not None:
                on_start(sentence)
            first = first or loop.time()
            try:
                await asyncio.wait_for(self._stop.wait(), 0.02 * len(sentence.split()))
                interrupted = True
                break
            except asyncio.TimeoutError:
                played.append(sentence)
        return Spoken(" ".join(played), interrupted, first, 0.02 * len(" ".join(played).split()))


class Harness:
    def __init__(self, plan: InterviewPlan, settings: TurnSettings = FAST,
                 engine: InterviewerEngine | None = None,
                 on_answer_taken: Callable[[tuple[float, float]], None] | None = None) -> None:
        self.session = InterviewSession(job_role=plan.job_role)
        self.voice = StandInVoice()
        self.events: list[dict[str, Any]] = []
        self.finished = asyncio.Event()
        interview = Interview(self.session, AnomalyRules(AnomalySettings()),
                             conversation=ConversationState(engine or StructuredInterviewer(plan)))
        self.conversation = Conversation(
            interview, self.voice, settings=settings,
            notify=lambda event: self.events.append(json.loads(encode(event))),
            on_finished=self.finished.set, on_answer_taken=on_answer_taken,
        )

    async def state(self, state: str, timeout: float = 10) -> None:
        """Wait until the conversation enters `state` anew (or is in it at first)."""
        seen = sum(1 for e in self.events if e == {"type": "state", "state": state})
        if not seen and self.conversation.state == state:
            return

        async def reached() -> None:
            while sum(1 for e in self.events if e == {"type": "state", "state": state}) <= seen:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(reached(), timeout)

    async def answer(self, text: str, speech_s: float = 2.0) -> None:
        """The candidate speaks, pauses, and the transcript arrives."""
        self.conversation.voice(True)
        await asyncio.sleep(0.05)
        self.conversation.voice(False)
        await asyncio.sleep(0.05)
        self.conversation.transcript(text, utterance_done=True, latency_s=0.1, speech_s=speech_s)

    def turns(self) -> list[tuple[str, str]]:
        return [(t.role, t.content) for t in self.session.conversation_history]


PLAN = InterviewPlan("Data engineer", ("Tell me about yourself.", "Why this role?"),
                     max_minutes=20)


async def test_a_full_structured_interview():
    h = Harness(PLAN)
    h.conversation.start()
    await h.state("listening")
    await h.answer(LONG_ANSWER)
    await h.state("listening")
    await h.answer(LONG_ANSWER)
    await asyncio.wait_for(h.finished.wait(), 10)
    roles = [r for r, _ in h.turns()]
    assert roles == ["assistant", "user", "assistant", "user", "assistant"]
    first = h.turns()[0][1]
    assert "I'm Serin" in first and "Data engineer" in first and "Tell me about yourself." in first
    assert "Why this role?" in h.turns()[2][1]
    assert "Goodbye" in h.turns()[4][1]
    assert [e["state"] for e in h.events if e["type"] == "state"][-1] == "ended"
    assert [e for e in h.events if e["type"] == "interviewer"]
    # The report's raw material: one log per question with the answer and its length.
    logs = sorted(h.conversation.questions.items())
    assert [q.answers for _, q in logs] == [[LONG_ANSWER], [LONG_ANSWER]]
    assert all(q.speech_s == 2.0 for _, q in logs)
    (metrics, _) = h.conversation.turns[:2]
    assert metrics.as_dict()["turn_latency_s"] is not None


async def test_short_answer_gets_one_follow_up_then_moves_on():
    h = Harness(PLAN)
    h.conversation.start()
    await h.state("listening")
    await h.answer("Not sure, maybe.")
    await h.state("listening")
    assert h.turns()[-1][0] == "assistant" and "Tell me about yourself" not in h.turns()[-1][1]
    await h.answer("Still not sure.")
    await h.state("listening")
    assert "Why this role?" in h.turns()[-1][1]
    await h.conversation.close()


async def test_a_thinking_pause_does_not_end_the_turn():
    h = Harness(PLAN)
    h.conversation.start()
    await h.state("listening")
    c = h.conversation
    c.voice(True)
    c.voice(False)
    c.transcript("I worked on billing systems for years and", utterance_done=True,
                 latency_s=0.0, speech_s=2)
    await asyncio.sleep(0.2)  # shorter than the required silence
    c.voice(True)
    await asyncio.sleep(0.3)
    c.voice(False)
    c.transcript("I enjoyed the data modelling most.", utterance_done=True, latency_s=0.0,
                 speech_s=1)
    await h.state("thinking", timeout=5)
    assert h.turns()[1] == ("user", "I worked on billing systems for years and "
                                    "I enjoyed the data modelling most.")
    await h.conversation.close()


async def test_a_turn_ended_on_the_draft_asks_for_its_utterance_to_be_committed():
    """The media layer is told which paused utterance the turn took, once."""
    taken: list[tuple[float, float]] = []
    h = Harness(PLAN, replace(FAST, end_of_turn=EndOfTurnSettings()), on_answer_taken=taken.append)
    c = h.conversation
    c.start()
    await h.state("listening")
    c.voice(True)
    c.voice(False)
    c.transcript("I built the billing pipeline.", utterance_done=True, latency_s=0.0,
                 speech_s=2.0, span=(1.0, 3.0), provisional=True)
    c.turn_estimate(TurnEstimate(silence_s=0.2, probability=0.99))  # complete: ends the turn
    await h.state("thinking", timeout=5)
    assert taken == [(1.0, 3.0)]
    assert h.turns()[1] == ("user", "I built the billing pipeline.")
    # Its committed twin replaces the draft's text; nothing is asked again.
    c.transcript("I built the billing pipeline.", utterance_done=True, latency_s=0.0,
                 speech_s=2.0, span=(1.0, 3.0))
    await h.state("listening")
    await h.answer("Because I like data.")  # committed text only: nothing to commit early
    c.turn_estimate(TurnEstimate(silence_s=0.2, probability=0.99))
    await h.state("thinking", timeout=5)
    assert taken == [(1.0, 3.0)]
    await h.conversation.close()


async def test_barge_in_stops_the_interviewer_but_a_backchannel_does_not():
    long_greeting = " ".join(["This is a long sentence that keeps going."] * 20)
    plan = InterviewPlan("QA", ("First question?", "Second?"), greeting=long_greeting)
    h = Harness(plan)
    h.conversation.start()
    await h.state("speaking")
    c = h.conversation
    loop = asyncio.get_running_loop()
    c.voice(True)  # "mm-hm": 0.25 s confirmed + 0.2 s more, under 0.6 s in all
    await asyncio.sleep(0.2)
    c.voice(False)
    c.transcript("Mm-hm.", utterance_done=True, latency_s=0.0, speech_s=0.4)
    await asyncio.sleep(0.5)
    assert h.voice.stopped_at is None and c.state == "speaking"
    started = loop.time() - FAST.vad_confirm_s  # real speech over the interviewer
    c.voice(True)
    await h.state("listening", timeout=5)
    assert h.voice.stopped_at is not None
    assert h.voice.stopped_at - started == pytest.approx(FAST.barge_in_s, abs=0.2)
    assert c.barge_ins == 1
    spoken = h.turns()[0][1]  # only what was played is in the history
    assert len(spoken) < len(long_greeting) and "First question?" not in spoken
    await h.conversation.close()


async def test_silence_gets_two_nudges_then_the_next_question():
    h = Harness(PLAN)
    h.conversation.start()
    await h.state("listening")
    said: list[str] = []
    for _ in range(3):
        await h.state("thinking", timeout=5)
        await h.state("listening", timeout=5)
        said.append(h.turns()[-1][1])
    assert "Take your time" in said[0] and "still there" in said[1]
    assert "Why this role?" in said[2]
    assert [r for r, _ in h.turns()] == ["assistant"] * 4  # no user turn was invented
    await h.conversation.close()


async def test_the_interviewers_own_voice_heard_back_is_ignored():
    h = Harness(PLAN)
    h.conversation.start()
    await h.state("listening")
    echo = h.turns()[0][1].split(".")[0]  # part of the greeting, picked up by the mic
    h.conversation.transcript(echo, utterance_done=True, latency_s=0.0, speech_s=2)
    await asyncio.sleep(0.8)
    assert h.conversation.echoes_ignored == 1
    assert "user" not in [r for r, _ in h.turns()]
    await h.conversation.close()


def test_default_plan_and_repeat_request():
    engine = StructuredInterviewer(default_plan("Product designer"))
    opening = engine.decide("", time_left_s=1200, nudges=0)
    assert opening.kind is MoveKind.OPEN and "Product designer" in opening.text
    again = engine.decide("Sorry, could you repeat the question?", time_left_s=1200, nudges=0)
    assert again.kind is MoveKind.REPEAT and engine.plan.questions[0] in again.text
    move = engine.decide(LONG_ANSWER, time_left_s=1200, nudges=0)
    assert move.kind is MoveKind.NEXT and engine.plan.questions[1] in move.text
    # Out of time: the next answer closes the interview.
    assert engine.decide(LONG_ANSWER, time_left_s=10, nudges=0).kind is MoveKind.CLOSE


async def test_the_answer_in_progress_is_checkpointed_until_it_becomes_a_turn():
    h = Harness(PLAN)
    h.conversation.start()
    await h.state("listening")
    c = h.conversation
    c.voice(True)
    c.voice(False)
    c.transcript("I worked on billing systems for years and", utterance_done=True,
                 latency_s=0.0, speech_s=2)
    # Mid-answer: a checkpoint now carries what was heard so far.
    info = h.session.session_information()
    assert info["answer_in_progress"] == "I worked on billing systems for years and"
    assert [t["role"] for t in info["conversation_history"]] == ["assistant"]
    await h.state("thinking", timeout=5)
    info = h.session.session_information()
    assert "answer_in_progress" not in info
    assert info["conversation_history"][1]["content"].startswith("I worked on billing")
    await h.conversation.close()
