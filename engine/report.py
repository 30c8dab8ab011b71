"""The interview report stored in `"Interview_report"`.

The factual part is always there: per question the question, a summary of
the answer (its opening words, not a paraphrase), how long the candidate
spoke and how fast; the anomalies; the talk time. With an LLM, an evaluation
per competency is added, each score with a rationale and quotes that are
checked to appear word for word in the transcript; quotes that do not are
dropped, and a competency left with no quote is dropped too. Offline, there
is no evaluation: no invented scores.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine import jsontext
from engine.ports import InterviewerLlm, LlmError, LlmRequest
from engine.session import Turn, utc_now

__all__ = ["AnswerRecord", "build_report", "evaluate"]

log = logging.getLogger(__name__)

_SUMMARY_WORDS = 40


@dataclass(frozen=True)
class AnswerRecord:
    question: str
    answers: tuple[str, ...]
    speech_s: float


def build_report(
    answers: Sequence[AnswerRecord],
    anomalies: Iterable[dict[str, Any]],
    *,
    candidate_talk_s: float,
    interviewer_talk_s: float,
    provider: str,
    model: str,
    evaluation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    anomalies = list(anomalies)
    return {
        "generated_at": utc_now().isoformat(),
        "engine": {"provider": provider, "model": model},
        "questions": [_question_entry(a) for a in answers],
        "anomalies_summary": {
            "total": len(anomalies),
            "by_type": dict(Counter(str(a.get("type")) for a in anomalies)),
            "timestamps": [a.get("timestamp") for a in anomalies],
        },
        "talk_time_s": {
            "candidate": round(candidate_talk_s, 1),
            "interviewer": round(interviewer_talk_s, 1),
            "total": round(candidate_talk_s + interviewer_talk_s, 1),
        },
        "evaluation": evaluation,
    }


def _question_entry(record: AnswerRecord) -> dict[str, Any]:
    text = " ".join(record.answers)
    words = len(text.split())
    wpm = round(words / (record.speech_s / 60), 1) if record.speech_s > 0 else None
    return {
        "question": record.question,
        "answer_summary": _summary(text),
        "answer_duration_s": round(record.speech_s, 1),
        "words": words,
        "words_per_minute": wpm,
    }


def _summary(text: str) -> str:
    words = text.split()
    if len(words) <= _SUMMARY_WORDS:
        return text
    return " ".join(words[:_SUMMARY_WORDS]) + " …"


_EVALUATION_PROMPT = """You evaluate a job interview for the role of {role}.
Return ONLY a JSON object: {{"competencies": [{{"name": str, "score": 1-5 integer,
"rationale": str, "quotes": [exact quotes from the candidate's answers]}}], "overall": str}}.
Use 3 to 5 competencies relevant to the role (e.g. technical depth, problem solving,
communication, collaboration). Every quote must be copied word for word from the
candidate's turns below. Judge only what the candidate said."""


async def evaluate(
    llm: InterviewerLlm, role: str, transcript: Sequence[Turn]
) -> dict[str, Any] | None:
    """Scores per competency with quotes checked against the transcript, or None."""
    request = LlmRequest(
        system=_EVALUATION_PROMPT.format(role=role),
        history=[*transcript, Turn("user", "(The interview is over. Evaluate it now.)")],
        max_output_tokens=1200,
        temperature=0.0,
    )
    try:
        raw = await llm.complete(request)
    except LlmError as exc:
        log.warning("evaluation failed: %s", exc)
        return None
    said = " ".join(t.content for t in transcript if t.role == "user")
    return _checked(_parse_json(raw), said)


def _parse_json(raw: str) -> dict[str, Any]:
    match = re.search(r"\{.*\}", raw, re.DOTALL)
    try:
        value = jsontext.loads(match.group(0)) if match else {}
    except (ValueError, RecursionError):  # malformed, or nested too deeply
        return {}
    return value if isinstance(value, dict) else {}


def _checked(evaluation: dict[str, Any], said: str) -> dict[str, Any] | None:
    haystack = f" {_norm(said)} "
    kept = []
    for item in evaluation.get("competencies") or []:
        if not isinstance(item, dict):
            continue
        quotes = [q for q in item.get("quotes") or [] if isinstance(q, str) and _norm(q) and f" {_norm(q)} " in haystack]
        score = item.get("score")
        if quotes and isinstance(score, int) and 1 <= score <= 5:
            kept.append({
                "name": str(item.get("name", "")),
                "score": score,
                "rationale": str(item.get("rationale", "")),
                "quotes": quotes,
            })
    if not kept:
        return None
    return {"competencies": kept, "overall": str(evaluation.get("overall", ""))}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))
