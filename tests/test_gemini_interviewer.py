"""The Gemini interviewer through the real google-genai SDK and a local stub.

What is sent (role, plan, resume), falling back to the structured engine's
words when the provider fails, and the LLM evaluation in the report with its
quotes checked against the transcript.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.gemini import GeminiLlm
from engine.interviewer import GeminiInterviewer, InterviewPlan, StructuredInterviewer
from engine.report import evaluate
from engine.session import Turn
from testing import Drop, Fail, GeminiStub, Reply, Stall, chunks
from tests.test_conversation import LONG_ANSWER, Harness

PLAN = InterviewPlan(
    "Site reliability engineer",
    ("Tell me about an outage you handled.", "How do you decide what to alert on?"),
    resume_text="Ada Lovelace. Five years at Analytical Engines Ltd running Kubernetes on call.",
)


_CLIENTS: list[GeminiLlm] = []


@pytest.fixture
async def stub(loop_errors: list[dict[str, Any]]) -> AsyncIterator[GeminiStub]:
    server = GeminiStub()
    await server.start()
    yield server
    while _CLIENTS:
        await _CLIENTS.pop().aclose()
    await server.close()


def gemini(stub: GeminiStub) -> GeminiLlm:
    llm = GeminiLlm("test-key", "gemini-2.5-flash", base_url=stub.base_url,
                    first_token_timeout_s=0.5, total_timeout_s=5.0, complete_timeout_s=5.0)
    _CLIENTS.append(llm)
    return llm


def harness(llm: GeminiLlm) -> tuple[Harness, GeminiInterviewer]:
    engine = GeminiInterviewer(StructuredInterviewer(PLAN), llm)
    return Harness(PLAN, engine=engine), engine


async def test_gemini_words_the_interview_from_role_plan_and_resume(stub: GeminiStub):
    stub.script(
        Reply(chunks("Hi, I'm Serin. ", "Welcome! ", "Tell me about an outage you handled.",
                     delay_s=0.05)),
        Reply(chunks("Thanks. ", "How do you decide what to alert on?")),
    )
    h, engine = harness(gemini(stub))
    h.conversation.start()
    await h.state("listening")
    await h.answer(LONG_ANSWER)
    await h.state("listening")
    assert h.turns()[0] == ("assistant", "Hi, I'm Serin. Welcome! Tell me about an outage you handled.")
    assert h.turns()[2] == ("assistant", "Thanks. How do you decide what to alert on?")
    first, second = stub.requests[:2]
    assert first.path.endswith("/models/gemini-2.5-flash:streamGenerateContent")
    system = json.dumps(first.body["systemInstruction"])
    for needle in ("Site reliability engineer", "Tell me about an outage you handled.",
                   "How do you decide what to alert on?", "Analytical Engines Ltd"):
        assert needle in system
    # The history sent is the real one (plus Gemini's required opening user turn).
    contents = second.body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[2]["parts"][0]["text"] == LONG_ANSWER
    # Nothing synthetic reached the stored conversation.
    assert [r for r, _ in h.turns()] == ["assistant", "user", "assistant"]
    assert engine.errors == [] and engine.fallbacks == 0
    await h.conversation.close()


@pytest.mark.parametrize(
    "failure",
    [Fail(429), Fail(500), Stall(3.0), Drop(())],
    ids=["rate-limited", "server-error", "slow-first-token", "dropped-stream"],
)
async def test_provider_failure_falls_back_for_that_turn(stub: GeminiStub, failure: Any):
    stub.script(failure, Reply(chunks("Thanks. ", "How do you decide what to alert on?")))
    h, engine = harness(gemini(stub))
    loop = asyncio.get_running_loop()
    started = loop.time()
    h.conversation.start()
    await h.state("listening")
    # The opening came from the structured engine, within the first-token timeout.
    assert "I'm Serin" in h.turns()[0][1] and PLAN.questions[0] in h.turns()[0][1]
    assert loop.time() - started < 3.0
    assert engine.fallbacks == 1 and len(engine.errors) == 1
    await h.answer(LONG_ANSWER)
    await h.state("listening")
    assert h.turns()[2][1] == "Thanks. How do you decide what to alert on?"  # Gemini again
    await h.conversation.close()


async def test_evaluation_keeps_only_quotes_from_the_transcript(stub: GeminiStub):
    verdict = {
        "competencies": [
            {"name": "Incident response", "score": 4, "rationale": "Led the migration calmly.",
             "quotes": ["we moved forty million rows in one night", "I invented the internet"]},
            {"name": "Made up", "score": 5, "rationale": "x", "quotes": ["never said this"]},
            {"name": "Bad score", "score": 9, "rationale": "x", "quotes": ["billing system"]},
        ],
        "overall": "Solid.",
    }
    stub.script(Reply(chunks("```json\n" + json.dumps(verdict) + "\n```")))
    transcript = [Turn("assistant", "Tell me about a migration."), Turn("user", LONG_ANSWER)]
    result = await evaluate(gemini(stub), "Data engineer", transcript)
    assert result == {
        "competencies": [{"name": "Incident response", "score": 4,
                          "rationale": "Led the migration calmly.",
                          "quotes": ["we moved forty million rows in one night"]}],
        "overall": "Solid.",
    }
    stub.script(Fail(500))
    assert await evaluate(gemini(stub), "Data engineer", transcript) is None
    # A reply nested past the parser's recursion limit is no evaluation, not a crash.
    stub.script(Reply(chunks('{"competencies": ' + "[" * 5000 + "]" * 5000 + "}")))
    assert await evaluate(gemini(stub), "Data engineer", transcript) is None


async def test_server_uses_gemini_when_a_key_is_set(stub: GeminiStub, make_client: Any, db: Any):
    from testing import Candidate, SpeechTrack
    from tests.test_interview import wait_for_state
    from tests.test_media import stored_row

    stub.script(Reply(chunks("Hello from Gemini. ", "Tell me about an outage you handled.")))
    client = await make_client(ice_loopback_only=True, keepalive_timeout_s=5.0,
                               gemini_api_key="test-key", gemini_base_url=stub.base_url)
    sid = (await (await client.post("/sessions", json={"job_role": "SRE"})).json())["session_id"]
    candidate = Candidate(SpeechTrack(None), None)
    try:
        await candidate.join(client, sid)
        said = await candidate.wait_for("interviewer", count=2, timeout=30)
        assert [e["text"] for e in said[:2]] == ["Hello from Gemini.",
                                                  "Tell me about an outage you handled."]
        await wait_for_state(candidate, "listening", 1)
        candidate.send({"type": "end"})
        row = await stored_row(db, sid)
    finally:
        await candidate.close()
    info = json.loads(row["session_information"])
    assert (info["llm_provider"], info["llm_model"]) == ("gemini", "gemini-2.5-flash")
    assert info["conversation_history"][0]["content"].startswith("Hello from Gemini.")
