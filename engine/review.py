"""The reviewer's side, as plain data: review tokens, decisions, the timeline.

A reviewer (a recruiter, a proctor) looks at an interview that happened and
decides about it: per anomaly flag, *confirmed* or *dismissed* with a note,
and for the interview as a whole a review status. Decisions are stored as
an append-only log (`storage.pg`, table `interview_review_decisions`): the
latest entry per flag is its state, and the log is the audit trail (who,
when).

Review tokens open one interview's review without the API key, so that an
integrator can link or iframe it. They are signed, not stored: an HMAC over
the session id, the scope and the reviewer's name with a secret that every
node shares through the database, so any node can check them and the API
key holder can mint new ones at any time. A `read` token (the `review_url`
handed out with every session) only reads; a `decide` token also records
decisions, in the reviewer's name. Every token expires (`REVIEW_TOKEN_TTL_S`
by default); revoking all of them at once is rotating the secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Decision",
    "FlagDecision",
    "ReviewKeys",
    "ReviewScope",
    "ReviewStatus",
    "ReviewToken",
    "Reviewer",
    "ReviewTokens",
    "review_of",
    "timeline",
]

MAX_NOTE = 2000
MAX_REVIEWER = 80


class ReviewStatus(enum.StrEnum):
    """The interview's overall review status."""

    UNREVIEWED = "unreviewed"  # nobody decided yet (the default: no entry)
    IN_REVIEW = "in_review"
    CLEARED = "cleared"  # the flags do not change the outcome
    REJECTED = "rejected"  # the interview does not count (e.g. it was not the candidate alone)

    @property
    def decided(self) -> bool:
        return self in (ReviewStatus.CLEARED, ReviewStatus.REJECTED)


class FlagDecision(enum.StrEnum):
    """A reviewer's decision on one anomaly flag."""

    OPEN = "open"  # undecided (the default; also how a decision is taken back)
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


class ReviewScope(enum.StrEnum):
    READ = "read"
    DECIDE = "decide"


@dataclass(frozen=True)
class Decision:
    """One entry of the decision log: a flag's (`flag` set) or the interview's."""

    flag: int | None
    decision: str
    note: str | None
    decided_by: str
    decided_at: datetime
    id: int = 0  # its place in the log (the table's `decision_id`)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flag": self.flag,
            "decision": self.decision,
            "note": self.note,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat(),
        }


@dataclass(frozen=True)
class ReviewToken:
    """What a valid review token grants."""

    session_id: uuid.UUID
    scope: ReviewScope
    reviewer: str  # who decisions made with it are recorded as
    expires_at: int  # Unix seconds

    @property
    def can_decide(self) -> bool:
        return self.scope is ReviewScope.DECIDE


@dataclass(frozen=True)
class Reviewer:
    """Who is calling a review route, as the audit log names them."""

    name: str
    can_decide: bool
    by_key: bool = False  # the API key (or local mode), not a review token
    expires_at: int | None = None  # the token's (Unix seconds); None for the API key


class ReviewTokens:
    """Mints and checks review tokens with one shared secret.

    A token is `<payload>.<signature>`, both base64url: the payload is the
    JSON `[scope, reviewer, expires_at]` (Unix seconds), the signature
    HMAC-SHA256 over the session id and the payload. The session id is not
    in the token: a token is only ever checked against the session its URL
    names.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the review-token secret must be at least 16 bytes")
        self._secret = secret

    def mint(self, session_id: uuid.UUID, scope: ReviewScope = ReviewScope.READ,
             reviewer: str = "review link", *, ttl_s: float, now: float | None = None) -> str:
        expires_at = int((time.time() if now is None else now) + ttl_s)
        body = json.dumps([scope.value, reviewer, expires_at], separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{payload}.{self._sign(session_id, payload)}"

    def check(self, session_id: uuid.UUID, token: str | None,
              now: float | None = None) -> ReviewToken | None:
        """What `token` grants on `session_id`, or None if it is not a valid
        one (or has expired)."""
        if not token or token.count(".") != 1:
            return None
        payload, signature = token.split(".")
        expected = self._sign(session_id, payload)
        if not hmac.compare_digest(signature.encode("utf-8", "surrogateescape"),
                                   expected.encode()):
            return None
        try:
            scope, reviewer, expires_at = json.loads(_unb64(payload))
            grant = ReviewToken(session_id, ReviewScope(scope), str(reviewer), int(expires_at))
        except (ValueError, TypeError, binascii.Error):
            return None  # signed by us, so never; but never a 500 either
        if grant.expires_at <= (time.time() if now is None else now):
            return None
        return grant

    def _sign(self, session_id: uuid.UUID, payload: str) -> str:
        message = b"review-token:v1:" + session_id.bytes + b":" + payload.encode("ascii", "replace")
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())


class ReviewKeys:
    """The review-token key from `secret` (the database's, shared by every
    node), read on first use and then kept."""

    def __init__(self, secret: Callable[[], Awaitable[bytes]]) -> None:
        self._secret = secret
        self._tokens: ReviewTokens | None = None
        self._lock = asyncio.Lock()

    async def tokens(self) -> ReviewTokens:
        """Raises what `secret` raises (the database unavailable: a 503)."""
        if self._tokens is None:
            async with self._lock:
                if self._tokens is None:
                    self._tokens = ReviewTokens(await self._secret())
        return self._tokens


def review_of(decisions: list[Decision], flags: int) -> dict[str, Any]:
    """The current state a decision log leaves: per flag and overall."""
    latest_flag: dict[int, Decision] = {}
    overall: Decision | None = None
    for entry in decisions:  # oldest first
        if entry.flag is None:
            overall = entry
        elif 0 <= entry.flag < flags:
            latest_flag[entry.flag] = entry
    per_flag = [latest_flag[i].to_json() if i in latest_flag else None for i in range(flags)]
    open_flags = sum(
        1 for i in range(flags)
        if i not in latest_flag or latest_flag[i].decision == FlagDecision.OPEN
    )
    return {
        "status": overall.decision if overall is not None else ReviewStatus.UNREVIEWED.value,
        "note": overall.note if overall is not None else None,
        "decided_by": overall.decided_by if overall is not None else None,
        "decided_at": overall.decided_at.isoformat() if overall is not None else None,
        "flags": per_flag,
        "open_flags": open_flags,
        "history": [entry.to_json() for entry in reversed(decisions)],  # newest first
    }


def timeline(session_information: dict[str, Any] | None) -> dict[str, Any]:
    """The transcript and flags of a row, each line with its offset on the
    recording's clock (None where the row predates offsets)."""
    info = session_information or {}
    lines = []
    for turn in info.get("conversation_history") or []:
        if isinstance(turn, dict) and turn.get("role") in ("assistant", "user"):
            lines.append({
                "role": turn["role"],
                "content": str(turn.get("content", "")),
                "offset_s": _number(turn.get("offset_s")),
                "end_offset_s": _number(turn.get("end_offset_s")),
            })
    flags = []
    for index, anomaly in enumerate(info.get("anomalies_detected") or []):
        if isinstance(anomaly, dict):
            flags.append({
                "flag": index,
                "type": str(anomaly.get("type", "")),
                "count": anomaly.get("count"),
                "timestamp": anomaly.get("timestamp"),
                "offset_s": _number(anomaly.get("offset_s")),
                "evidence_url": anomaly.get("evidence_url"),
                "detections": anomaly.get("detections") or [],
            })
    return {"transcript": lines, "flags": flags}


def check_reviewer(name: object) -> str:
    """A reviewer's name as given in a body or a minted token (ValueError if unfit)."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_REVIEWER:
        raise ValueError(f"reviewer must be a non-empty string of at most {MAX_REVIEWER} "
                         "characters")
    if any(ord(c) < 32 for c in name):
        raise ValueError("reviewer must not hold control characters")
    return name.strip()


def check_note(note: object) -> str | None:
    if note is None:
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ValueError(f"note must be a string of at most {MAX_NOTE} characters")
    return note


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
