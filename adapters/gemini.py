"""Gemini (google-genai) behind `engine.ports.InterviewerLlm`.

`GeminiLlm.stream` yields the reply as text deltas (`engine.sentences`
regroups them into sentences). Every failure of a model call surfaces as
`engine.ports.LlmError`, whose `kind` says what went wrong. The interviewer
falls back to its offline engine on any `LlmError`, so `GeminiLlm`
guarantees that nothing else escapes and that every call ends within its
timeouts: the first text must arrive within `first_token_timeout_s`, the
whole reply within `total_timeout_s` (`complete` has its own
`complete_timeout_s`). Errors raised after some text was yielded still
leave that text with the caller.

The SDK is pinned down explicitly rather than left to its defaults (see
`_gemini_client`): google-genai 3.6.1 sends no timeout at all unless
told to, reads `GOOGLE_GENAI_*` variables from the environment, and picks
aiohttp over httpx2 when aiohttp is installed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from config import DEFAULT_GEMINI_MODEL, DEFAULT_LLM_TIMEOUT_S
from engine.aio import aclose_quietly
from engine.ports import LlmError, LlmErrorKind, LlmRequest
from engine.session import Turn

__all__ = ["OPENING_TURN", "GeminiLlm"]

logger = logging.getLogger(__name__)

# Gemini requires the conversation to start with a user turn. When the
# interviewer speaks first, `GeminiLlm` sends this in front of the history
# for that one request only; it is never added to `LlmRequest.history`, the
# transcript or the stored interview.
OPENING_TURN = "(The candidate has joined the call.)"
# The SDK's own default for the Gemini API with a key; pinned so that
# GOOGLE_GENAI_API_VERSION in the environment cannot move the endpoint.
_API_VERSION = "v1"
_T = TypeVar("_T")


class GeminiLlm:
    """Gemini through google-genai's async streaming API.

    `base_url` replaces Google's endpoint (tests point it at a local stub).
    One instance serves one event loop; `await aclose()` when done.
    """

    def __init__(
        self,
        api_key: str,
        model: str = DEFAULT_GEMINI_MODEL,
        *,
        base_url: str | None = None,
        first_token_timeout_s: float = DEFAULT_LLM_TIMEOUT_S,
        total_timeout_s: float = 30.0,
        complete_timeout_s: float = 60.0,
    ) -> None:
        if not api_key.strip():
            raise ValueError("api_key is empty")
        _check_positive(
            first_token_timeout_s=first_token_timeout_s,
            total_timeout_s=total_timeout_s,
            complete_timeout_s=complete_timeout_s,
        )
        self.provider = "gemini"
        self.model = model
        self._first_token_timeout_s = first_token_timeout_s
        self._total_timeout_s = total_timeout_s
        self._complete_timeout_s = complete_timeout_s
        self._closed = False
        # Our own httpx2 client: with aiohttp installed the SDK would open an
        # aiohttp session whose class definition raises a DeprecationWarning
        # (an error under our test settings) and which reads proxies from the
        # environment. httpx2 is a hard dependency of google-genai.
        self._http = httpx2.AsyncClient(trust_env=False)
        self._client = _gemini_client(api_key, base_url, total_timeout_s, self._http)

    async def stream(self, request: LlmRequest) -> AsyncGenerator[str, None]:
        """Yield the reply's text deltas as they arrive.

        Raises `LlmError` (only): "timeout" when no text arrives within
        `first_token_timeout_s` or the reply is not finished within
        `total_timeout_s`; "stream_error" when the stream breaks or ends
        without Gemini's finish marker, after yielding what did arrive.
        """
        clock = _Deadlines.start(self._first_token_timeout_s, self._total_timeout_s)
        responses = await _guard(self._open_stream(request), clock.first_token)
        progress = _Progress()
        try:
            while True:
                deadline = clock.total if progress.has_text else clock.first_token
                response = await _guard(anext(responses, None), deadline)
                if response is None:
                    break
                if text := progress.observe(response):
                    yield text
        finally:
            await aclose_quietly(responses)
        progress.check_finished()

    async def complete(self, request: LlmRequest) -> str:
        """The whole reply in one piece (for the final report); raises `LlmError`."""
        deadline = asyncio.get_running_loop().time() + self._complete_timeout_s
        progress = _Progress()
        text = progress.observe(await _guard(self._generate(request), deadline))
        progress.check_finished()
        return text

    async def aclose(self) -> None:
        """Release connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()
        await self._client.aio.aclose()
        self._client.close()  # the SDK's own sync client, never used here

    async def _open_stream(
        self, request: LlmRequest
    ) -> AsyncIterator[types.GenerateContentResponse]:
        # Building the request inside the guarded call means a validation
        # error in it becomes an LlmError like everything else.
        return await self._client.aio.models.generate_content_stream(
            model=self.model, contents=_contents(request.history), config=self._config(request)
        )

    async def _generate(self, request: LlmRequest) -> types.GenerateContentResponse:
        return await self._client.aio.models.generate_content(
            model=self.model,
            contents=_contents(request.history),
            config=self._config(request, timeout_s=self._complete_timeout_s),
        )

    def _config(
        self, request: LlmRequest, *, timeout_s: float | None = None
    ) -> types.GenerateContentConfig:
        per_call = None
        if timeout_s is not None:
            per_call = types.HttpOptions(timeout=_milliseconds(timeout_s))
        return types.GenerateContentConfig(
            system_instruction=request.system,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
            candidate_count=1,
            thinking_config=_thinking_config(self.model),
            # Both are client-side loops that could issue more requests.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            automatic_continuation=False,
            http_options=per_call,
        )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _gemini_client(
    api_key: str, base_url: str | None, timeout_s: float, http: httpx2.AsyncClient
) -> genai.Client:
    """A Gemini API client with every network default pinned down."""
    return genai.Client(
        api_key=api_key,
        enterprise=False,  # ignore GOOGLE_GENAI_USE_VERTEXAI/ENTERPRISE
        http_options=types.HttpOptions(
            base_url=base_url,
            api_version=_API_VERSION,
            # Without a timeout the SDK waits forever; this is a backstop
            # behind the first-token and total deadlines in `GeminiLlm`.
            timeout=_milliseconds(timeout_s),
            # One attempt, stated rather than implied: retry_options=None
            # means one too, but HttpRetryOptions() without `attempts`
            # means 5 with 1-8 s backoff on 408/429/5xx, and on the aiohttp
            # transport only an explicit value stops a hidden 1-10 s retry
            # on connection errors. The interviewer's fallback beats any retry.
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=http,
        ),
    )


def _milliseconds(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _thinking_config(model: str) -> types.ThinkingConfig | None:
    """Thinking off where the model allows it: it delays the first token.

    Only the 2.5 Flash family accepts a budget of 0 (2.5 Pro rejects it);
    other models keep their default.
    """
    if model.removeprefix("models/").startswith("gemini-2.5-flash"):
        return types.ThinkingConfig(thinking_budget=0)
    return None


def _contents(history: list[Turn]) -> list[types.Content]:
    """Gemini's `contents` for a history, starting with a user turn.

    Blank turns are skipped (Gemini rejects empty text parts). If what is
    left is empty or starts with the interviewer, `OPENING_TURN` goes first.
    """
    turns = [turn for turn in history if turn.content.strip()]
    contents = [
        types.Content(
            role="model" if turn.role == "assistant" else "user",
            parts=[types.Part(text=turn.content)],
        )
        for turn in turns
    ]
    if not turns or turns[0].role == "assistant":
        contents.insert(0, types.Content(role="user", parts=[types.Part(text=OPENING_TURN)]))
    return contents


@dataclass(frozen=True)
class _Deadlines:
    """Event-loop times by which the first text and the whole reply are due."""

    first_token: float
    total: float

    @classmethod
    def start(cls, first_token_s: float, total_s: float) -> _Deadlines:
        now = asyncio.get_running_loop().time()
        return cls(first_token=now + min(first_token_s, total_s), total=now + total_s)


@dataclass
class _Progress:
    """What a reply has shown so far: text, and how (or whether) it ended."""

    has_text: bool = False
    finish_reason: str | None = None
    block_reason: str | None = None

    def observe(self, response: types.GenerateContentResponse) -> str:
        """Record one response (or stream chunk) and return its answer text."""
        if response.prompt_feedback and response.prompt_feedback.block_reason:
            self.block_reason = response.prompt_feedback.block_reason.name
        if not response.candidates:
            return ""
        candidate = response.candidates[0]
        if candidate.finish_reason:
            self.finish_reason = candidate.finish_reason.name
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        text = "".join(part.text for part in parts if part.text and not part.thought)
        self.has_text = self.has_text or bool(text)
        return text

    def check_finished(self) -> None:
        """Raise unless the reply had text and ended the way Gemini ends one."""
        if not self.has_text:
            reason = self.block_reason or self.finish_reason or "no candidates"
            raise _failed("empty_response", f"no text in the reply ({reason})")
        if self.finish_reason is None:
            # Gemini marks its last chunk with a finishReason; a clean end
            # without one means a proxy or the server cut the reply short.
            raise _failed("stream_error", "stream ended without a finish reason")


async def _guard(awaitable: Awaitable[_T], deadline: float) -> _T:
    """Await one SDK step by `deadline`; any failure becomes an `LlmError`."""
    try:
        async with asyncio.timeout_at(deadline):
            return await awaitable
    except Exception as exc:
        raise _as_llm_error(exc) from exc


def _as_llm_error(exc: Exception) -> LlmError:
    if isinstance(exc, LlmError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        return _failed(_api_error_kind(exc.code), f"HTTP {exc.code} {exc.status}: {exc.message}")
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        return _failed("timeout", f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx2.ConnectError):
        return _failed("connection_error", f"{type(exc).__name__}: {exc}")
    # Broken connections mid-body, malformed SSE or JSON, SDK surprises.
    return _failed("stream_error", f"{type(exc).__name__}: {exc}")


def _api_error_kind(code: int) -> LlmErrorKind:
    if code == 429:
        return "rate_limited"
    if code == 408:
        return "timeout"
    if 500 <= code < 600:
        return "server_error"
    if 400 <= code < 500:
        return "client_error"
    return "stream_error"


def _failed(kind: LlmErrorKind, message: str) -> LlmError:
    logger.warning("LLM call failed (%s): %s", kind, message)
    return LlmError(kind, message)
