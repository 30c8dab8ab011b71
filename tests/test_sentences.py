"""The one sentence splitter: whole text and streamed text cut the same way.

`tests/test_tts.py` and `tests/test_llm.py` keep their own cases (the TTS
and LLM sides of it); this file checks what joins them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.interviewer import InterviewPlan, Move, MoveKind, StructuredInterviewer
from engine.sentences import sentences, split_sentences

pytestmark = pytest.mark.timeout(10)

CASES = [
    ("Hello Mr. Smith. How are you?", ["Hello Mr. Smith.", "How are you?"]),
    ("1. Design it. 2. Build it.", ["1. Design it.", "2. Build it."]),
    ("The answer is no. Next question.", ["The answer is no.", "Next question."]),
    ("See No. 5 on the list. Then stop.", ["See No. 5 on the list.", "Then stop."]),
    ("Wait... what happened? Tell me.", ["Wait... what happened?", "Tell me."]),
    ("A line that\nwraps. And a\nNew line", ["A line that wraps.", "And a", "New line"]),
    ("first paragraph\n\nsecond one.", ["first paragraph", "second one."]),
    ("Ends with a space. ", ["Ends with a space."]),
    ("Tools, e.g. pytest, i.e. tests. At 9 a.m. we ship.",
     ["Tools, e.g. pytest, i.e. tests.", "At 9 a.m. we ship."]),
]


async def deltas(*parts: str) -> AsyncIterator[str]:
    for part in parts:
        yield part


@pytest.mark.parametrize(("text", "expected"), CASES)
async def test_streamed_text_splits_like_the_whole_text(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
    assert [s async for s in sentences(deltas(text))] == expected
    assert [s async for s in sentences(deltas(*text))] == expected


async def test_a_sentence_waits_for_the_next_character() -> None:
    # "Dr. " could still turn out to be "Dr. smith" or "Dr. Smith": nothing yet.
    stream = sentences(deltas("Thanks. ", "Dr. ", "Smith joins us."))
    assert await anext(stream) == "Thanks."
    assert await anext(stream) == "Dr. Smith joins us."


async def test_long_streamed_sentences_are_cut_like_whole_ones() -> None:
    sentence = ", ".join(f"part {i} of a very long answer" for i in range(12)) + "."
    expected = split_sentences(sentence)
    assert len(expected) > 1
    words = [f"{word} " for word in sentence.split(" ")]
    assert [s async for s in sentences(deltas(*words))] == expected


async def test_the_structured_interviewer_speaks_in_the_same_sentences() -> None:
    engine = StructuredInterviewer(InterviewPlan("QA", ("Why this role?",)))
    text = "Of course. Dr. Lee asked: e.g. why QA? Take your time."
    said = [s async for s in engine.say(Move(MoveKind.REPEAT, 0, text), [])]
    assert said == split_sentences(text) == [
        "Of course.", "Dr. Lee asked: e.g. why QA?", "Take your time."
    ]
