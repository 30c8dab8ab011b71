"""The LLM seam: the real google-genai SDK against a local Gemini stub.

Nothing here reaches Google: `GeminiLlm` gets the stub's 127.0.0.1 URL as
`base_url`, and the stub records what the SDK sent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.gemini import OPENING_TURN, GeminiLlm
from engine.ports import InterviewerLlm, LlmError, LlmErrorKind, LlmRequest
from engine.sentences import sentences
from engine.session import Turn
from testing import Chunk, Drop, Fail, GeminiStub, Reply, Stall, chunks

pytestmark = pytest.mark.timeout(30)

MODEL = "gemini-2.5-flash"
STREAM_PATH = f"/v1/models/{MODEL}:streamGenerateContent"
COMPLETE_PATH = f"/v1/models/{MODEL}:generateContent"
FIRST_TOKEN_S = 0.5
SYSTEM = (
    "You are interviewing for the role: Senior Backend Engineer.\n"
    "Plan: 1) warm-up 2) system design 3) wrap-up.\n"
    "Resume: 7 years of Go at Acme Payments."
)
HISTORY = [
    Turn("assistant", "Hi, thanks for joining. Tell me about yourself."),
    Turn("user", "I build payment systems."),
]


@pytest.fixture
async def stub(loop_errors: list[dict[str, Any]]) -> AsyncIterator[GeminiStub]:
    server = GeminiStub()
    await server.start()
    yield server
    await server.close()
    assert server.unscripted == 0, "the SDK sent requests nobody scripted (retries?)"


@pytest.fixture
async def llm(stub: GeminiStub) -> AsyncIterator[GeminiLlm]:
    model = GeminiLlm(
        "test-key",
        MODEL,
        base_url=stub.base_url,
        first_token_timeout_s=FIRST_TOKEN_S,
        total_timeout_s=2.0,
        complete_timeout_s=1.0,
    )
    yield model
    await model.aclose()


def request(history: list[Turn] | None = None) -> LlmRequest:
    return LlmRequest(system=SYSTEM, history=list(HISTORY if history is None else history))


async def collect(llm: GeminiLlm, req: LlmRequest) -> tuple[list[str], LlmError | None]:
    """Deltas received before the stream ended, and the error it ended with."""
    received: list[str] = []
    try:
        async for delta in llm.stream(req):
            received.append(delta)
    except LlmError as exc:
        return received, exc
    return received, None


async def deltas(*parts: str, error: LlmError | None = None) -> AsyncIterator[str]:
    for part in parts:
        yield part
    if error is not None:
        raise error


def texts(contents: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(content["role"], content["parts"][0]["text"]) for content in contents]


# --- streaming ------------------------------------------------------------


async def test_gemini_llm_satisfies_the_protocol(llm: GeminiLlm) -> None:
    seam: InterviewerLlm = llm
    assert (seam.provider, seam.model) == ("gemini", MODEL)


async def test_stream_yields_deltas_in_order(llm: GeminiLlm, stub: GeminiStub) -> None:
    stub.script(Reply(chunks("Hello", ", I am", " your interviewer", ".", delay_s=0.02)))
    received, error = await collect(llm, request())
    assert error is None
    assert received == ["Hello", ", I am", " your interviewer", "."]


async def test_finish_reason_in_a_last_chunk_without_text(llm: GeminiLlm, stub: GeminiStub) -> None:
    stub.script(Reply(chunks("Thanks.", " Next question?"), finish_apart=True))
    received, error = await collect(llm, request())
    assert error is None
    assert received == ["Thanks.", " Next question?"]


async def test_first_sentence_arrives_before_the_stream_ends(
    llm: GeminiLlm, stub: GeminiStub
) -> None:
    stub.script(
        Reply(
            (
                Chunk("Thanks for joining. "),
                Chunk("Let's start"),
                Chunk(" with your background.", delay_s=0.6),
            )
        )
    )
    seen: list[tuple[str, list[str]]] = []
    async for sentence in sentences(llm.stream(request())):
        seen.append((sentence, list(stub.sent)))
    assert [sentence for sentence, _ in seen] == [
        "Thanks for joining.",
        "Let's start with your background.",
    ]
    first_sentence, sent_by_then = seen[0]
    assert " with your background." not in sent_by_then  # the stub was still holding it


async def test_request_carries_system_history_and_config(
    llm: GeminiLlm, stub: GeminiStub
) -> None:
    stub.script(Reply(chunks("Great.")))
    req = LlmRequest(system=SYSTEM, history=list(HISTORY), max_output_tokens=123, temperature=0.7)
    await collect(llm, req)

    [sent] = stub.requests
    assert sent.path == STREAM_PATH
    assert sent.query == {"alt": "sse"}
    assert sent.headers["x-goog-api-key"] == "test-key"
    system = sent.body["systemInstruction"]["parts"][0]["text"]
    for fragment in ("Senior Backend Engineer", "system design", "7 years of Go at Acme"):
        assert fragment in system
    assert texts(sent.body["contents"]) == [
        ("user", OPENING_TURN),
        ("model", "Hi, thanks for joining. Tell me about yourself."),
        ("user", "I build payment systems."),
    ]
    config = sent.body["generationConfig"]
    assert config["maxOutputTokens"] == 123
    assert config["temperature"] == pytest.approx(0.7)
    assert config["candidateCount"] == 1
    # google-genai 3.6.1 passes ThinkingConfig through with snake_case keys.
    assert config["thinkingConfig"] == {"thinking_budget": 0}
    assert "tools" not in sent.body


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], [("user", OPENING_TURN)]),
        (
            [Turn("assistant", "Welcome!")],
            [("user", OPENING_TURN), ("model", "Welcome!")],
        ),
        (
            [Turn("user", "Hello?"), Turn("assistant", "Hi there.")],
            [("user", "Hello?"), ("model", "Hi there.")],
        ),
        (
            [Turn("user", "  "), Turn("assistant", "Welcome!")],
            [("user", OPENING_TURN), ("model", "Welcome!")],
        ),
    ],
    ids=["empty", "assistant-first", "user-first", "blank-user-skipped"],
)
async def test_conversation_starts_with_exactly_one_user_turn(
    llm: GeminiLlm,
    stub: GeminiStub,
    history: list[Turn],
    expected: list[tuple[str, str]],
) -> None:
    stub.script(Reply(chunks("Ok.")))
    req = request(history)
    await collect(llm, req)
    assert texts(stub.requests[0].body["contents"]) == expected
    assert req.history == history  # the synthetic turn is never stored


# --- failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "rate_limited"),
        (500, "server_error"),
        (503, "server_error"),
        (400, "client_error"),
        (403, "client_error"),
    ],
)
async def test_http_errors_fail_fast_without_retries(
    llm: GeminiLlm, stub: GeminiStub, status: int, kind: LlmErrorKind
) -> None:
    stub.script(Fail(status))
    started = time.monotonic()
    received, error = await collect(llm, request())
    assert received == []
    assert error is not None and error.kind == kind
    assert str(status) in error.message
    assert time.monotonic() - started < 0.5
    # HttpRetryOptions() without `attempts` would make that 5, 1-8 s apart.
    assert len(stub.requests) == 1


@pytest.mark.parametrize("after_headers", [False, True], ids=["silent", "headers-only"])
async def test_slow_first_token_times_out(
    llm: GeminiLlm, stub: GeminiStub, after_headers: bool
) -> None:
    stub.script(Stall(3.0, after_headers=after_headers))
    started = time.monotonic()
    received, error = await collect(llm, request())
    elapsed = time.monotonic() - started
    assert received == []
    assert error is not None and error.kind == "timeout"
    assert FIRST_TOKEN_S - 0.05 <= elapsed < FIRST_TOKEN_S + 0.5
    assert len(stub.requests) == 1


async def test_reply_slower_than_the_total_timeout_times_out(
    llm: GeminiLlm, stub: GeminiStub
) -> None:
    # The first chunk beats the first-token timeout; the rest misses the total.
    stub.script(Reply((Chunk("Let me think"), Chunk(" about that.", delay_s=3.0))))
    received, error = await collect(llm, request())
    assert received == ["Let me think"]
    assert error is not None and error.kind == "timeout"


async def test_dropped_stream_keeps_what_arrived(llm: GeminiLlm, stub: GeminiStub) -> None:
    stub.script(Drop(chunks("Tell me about ", "a time when")))
    received, error = await collect(llm, request())
    assert received == ["Tell me about ", "a time when"]
    assert error is not None and error.kind == "stream_error"


async def test_stream_ending_without_finish_reason_is_an_error(
    llm: GeminiLlm, stub: GeminiStub
) -> None:
    stub.script(Reply(chunks("Tell me about "), finish_reason=None))
    received, error = await collect(llm, request())
    assert received == ["Tell me about "]
    assert error is not None and error.kind == "stream_error"


async def test_reply_without_text_is_an_error(llm: GeminiLlm, stub: GeminiStub) -> None:
    stub.script(Reply(chunks(""), finish_reason="SAFETY"))
    received, error = await collect(llm, request())
    assert received == []
    assert error is not None and error.kind == "empty_response"
    assert "SAFETY" in error.message


async def test_unreachable_server_is_a_connection_error(loop_errors: list[dict[str, Any]]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = GeminiLlm("test-key", base_url=f"http://127.0.0.1:{port}/")
    try:
        received, error = await collect(model, request())
    finally:
        await model.aclose()
    assert received == []
    assert error is not None and error.kind == "connection_error"


async def test_abandoned_stream_releases_the_connection(
    llm: GeminiLlm, stub: GeminiStub
) -> None:
    stub.script(
        Reply((Chunk("First. "), Chunk("Second.", delay_s=3.0))),
        Reply(chunks("Again.")),
    )
    stream = llm.stream(request())
    assert await anext(stream) == "First. "
    await stream.aclose()  # the caller was interrupted (barge-in)
    assert await collect(llm, request()) == (["Again."], None)


async def test_cancelling_the_caller_is_not_an_llm_error(
    llm: GeminiLlm, stub: GeminiStub
) -> None:
    stub.script(Stall(3.0), Reply(chunks("Back.")))
    caller = asyncio.create_task(collect(llm, request()))
    await asyncio.sleep(0.2)  # well inside the 0.5 s first-token timeout
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await collect(llm, request()) == (["Back."], None)


# --- complete -------------------------------------------------------------


async def test_complete_returns_the_whole_reply(llm: GeminiLlm, stub: GeminiStub) -> None:
    stub.script(Reply(chunks("Strong ", "candidate. ", "Hire.")))
    assert await llm.complete(request()) == "Strong candidate. Hire."
    [sent] = stub.requests
    assert sent.path == COMPLETE_PATH
    assert "Acme Payments" in sent.body["systemInstruction"]["parts"][0]["text"]
    assert sent.body["generationConfig"]["thinkingConfig"] == {"thinking_budget": 0}


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (Fail(429), "rate_limited"),
        (Fail(500), "server_error"),
        (Fail(404), "client_error"),
        (Stall(3.0), "timeout"),
        (Drop(()), "stream_error"),
    ],
    ids=["429", "500", "404", "stall", "drop"],
)
async def test_complete_maps_errors(
    llm: GeminiLlm, stub: GeminiStub, behaviour: Fail | Stall | Drop, kind: LlmErrorKind
) -> None:
    stub.script(behaviour)
    started = time.monotonic()
    with pytest.raises(LlmError) as caught:
        await llm.complete(request())
    assert caught.value.kind == kind
    assert time.monotonic() - started < 1.5  # complete_timeout_s=1.0
    assert len(stub.requests) == 1


# --- sentences ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello Mr. Smith. How are you?", ["Hello Mr. Smith.", "How are you?"]),
        ("Use a tool, e.g. pytest. Then ship it.", ["Use a tool, e.g. pytest.", "Then ship it."]),
        ("Revenue grew 3.5 percent. Good!", ["Revenue grew 3.5 percent.", "Good!"]),
        ("Really? Yes!  Okay", ["Really?", "Yes!", "Okay"]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("1. Design it. 2. Build it.", ["1. Design it.", "2. Build it."]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ("We met at 9 a.m. and talked.", ["We met at 9 a.m. and talked."]),
        ("The answer is no. Next question.", ["The answer is no.", "Next question."]),
        ("Wait...", ["Wait..."]),
        ("", []),
    ],
)
async def test_sentences_split_whole_sentences(text: str, expected: list[str]) -> None:
    assert [s async for s in sentences(deltas(text))] == expected
    one_char_at_a_time = [s async for s in sentences(deltas(*text))]
    assert one_char_at_a_time == expected


async def test_sentences_drop_the_unfinished_sentence_on_error() -> None:
    failing = deltas("Done. Half a", error=LlmError("stream_error", "dropped"))
    received: list[str] = []
    with pytest.raises(LlmError):
        async for sentence in sentences(failing):
            received.append(sentence)
    assert received == ["Done."]


# --- validation -----------------------------------------------------------


def test_invalid_arguments_are_rejected_eagerly() -> None:
    with pytest.raises(ValueError, match="api_key"):
        GeminiLlm(" ")
    with pytest.raises(ValueError, match="first_token_timeout_s"):
        GeminiLlm("key", first_token_timeout_s=0)
    with pytest.raises(ValueError, match="max_output_tokens"):
        LlmRequest(system="", history=[], max_output_tokens=0)
    with pytest.raises(ValueError, match="role"):
        Turn("model", "hi")  # type: ignore[arg-type]
