"""Webhooks: signed JSON events, delivered from a durable outbox until they arrive.

An event (`interview.ended`, `review.decided`) is written to
`DATA_DIR/webhooks/<id>.json` before `WebhookSender.emit()` returns; the file
is the exact body POSTed to `WEBHOOK_URL`, and it is deleted once the
receiver answers 2xx. Anything else (another status, a refused connection, a
timeout) is retried with exponential backoff and jitter, each event on its
own schedule, oldest first; files left by an earlier process are delivered
after a restart. An event still undelivered `give_up_after_s` after it was
made goes to `webhooks/failed/`, kept for a person, and is counted.

Delivery is at least once: a process killed between the receiver's 2xx and
the file's deletion sends the event again after its restart. Receivers
dedupe by the id (`X-Webhook-Id`, the body's `"id"`), which is the same on
every attempt and for every repeat of the same event.

Each request carries `X-Signature: t=<unix seconds>,v1=<hex>`, the
HMAC-SHA256 of `f"{t}."` followed by the body, keyed with `WEBHOOK_SECRET`
(`sign`, `verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from engine.aio import KeyedLock, cancel_and_wait
from engine.session import SessionRow
from storage.files import fsync_directory, write_atomically

__all__ = [
    "INTERVIEW_ENDED", "REVIEW_DECIDED", "RetryPolicy", "WebhookSender", "ended_event_id",
    "interview_ended_event",
    "sign", "verify",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

INTERVIEW_ENDED = "interview.ended"
REVIEW_DECIDED = "review.decided"
USER_AGENT = "interview-media-server-webhooks/1"
# A held event (`emit(held=True)`) nobody released goes out after this anyway.
HOLD_S = 30.0
# An id names a file: nothing that could leave the directory or hide in it.
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_RECENTLY_DELIVERED = 10_000  # ids remembered to refuse a repeat within one process


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Signature` value: `t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>." + body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """Whether `header` signs `body` with `secret`, made within `tolerance_s` of `now`."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False  # a replay of an old request
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    # Any v1 may match: a sender rotating its secret may send two.
    # Bytes: compare_digest refuses a str that is not ASCII (a hostile header;
    # aiohttp hands undecodable header bytes over as surrogate escapes).
    return any(hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))
               for given in fields.get("v1", []))


def interview_ended_event(row: SessionRow) -> tuple[str, dict[str, Any]]:
    """The idempotency id and data of the `interview.ended` event of a final row."""
    info = row.session_information or {}
    anomalies = info.get("anomalies_detected")
    data = {
        "session_id": str(row.session_id),
        "status": row.status,
        "start_time": None if row.start_time is None else row.start_time.isoformat(),
        "end_time": None if row.end_time is None else row.end_time.isoformat(),
        "job_role": info.get("job_role"),
        "anomalies": len(anomalies) if isinstance(anomalies, list) else 0,
        "recording_url": row.recording_url,
    }
    # An ending is reported once: whichever path reports it (the node, a
    # sweep, a restart), the row and so the id are the same. An interrupted
    # interview may still go on on another node (a new run) and end again
    # later: that is another ending, with its own id.
    return ended_event_id(row.session_id, row.status, info.get("server_run")), data


def ended_event_id(session_id: uuid.UUID, status: str, server_run: str | None) -> str:
    """The `interview.ended` id of one ending: a session, its final status,
    the run that ended it."""
    return str(uuid.uuid5(session_id, f"{INTERVIEW_ENDED}:{status}:{server_run or ''}"))


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and for how long, an undelivered event is tried again."""

    first_s: float = 1.0  # the delay after the first failure, doubled after each
    max_s: float = 300.0
    give_up_after_s: float = 24 * 3600.0  # of the event's age
    timeout_s: float = 10.0  # of one request

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after `failures` failed ones, jittered
        (half to all of the doubled delay) so that retries do not come in waves."""
        base = min(self.max_s, self.first_s * 2.0 ** min(failures - 1, 60))
        return base * random.uniform(0.5, 1.0)


@dataclass
class _Pending:
    event_id: str
    event_type: str
    body: bytes
    created: float  # unix seconds, from the body's `created_at`
    due: float  # monotonic
    failures: int = 0
    held: bool = False  # waits for `release` (or HOLD_S)


class WebhookSender:
    """Stores events durably and POSTs them to `url`, signed with `secret`.

    With `url` None (no `WEBHOOK_URL`) it does nothing: `emit()` returns at
    once, and callers need not ask whether webhooks are configured.
    """

    def __init__(
        self,
        url: str | None,
        secret: str,
        directory: Path,
        *,
        policy: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._secret = secret
        self._files = _EventFiles(directory)
        self._policy = policy
        self._clock = clock
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-io")
        self._pending: dict[str, _Pending] = {}
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._emitting = KeyedLock()
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0  # attempts answered 2xx
        self.failed = 0  # attempts answered otherwise, or not answered
        self.given_up = 0  # events moved to `failed/`

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def pending(self) -> int:
        """Events stored and not delivered yet."""
        return len(self._pending)

    async def start(self) -> None:
        """Load the events an earlier process left undelivered, then start delivering."""
        if self.url is None:
            return
        for event_id, event_type, body, created in await self._run_io(self._files.load):
            self._pending[event_id] = _Pending(event_id, event_type, body, created,
                                               due=time.monotonic())
        if self._pending:
            log.warning("%d webhook event(s) from a previous run to deliver", len(self._pending))
        timeout = aiohttp.ClientTimeout(total=self._policy.timeout_s)
        self._http = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT})
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def close(self) -> None:
        """Stop delivering; what is undelivered stays on disk for the next start."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        await asyncio.to_thread(self._io.shutdown)

    async def emit(
        self, type: str, data: Mapping[str, Any], *, event_id: str, held: bool = False,
    ) -> None:
        """Store the event durably (returns once it is on disk), then deliver it.

        `held`: deliver it once `release`d (an event about a change a
        database transaction has not committed yet), or after `HOLD_S` if
        nobody does (a commit that failed after all, or whose outcome is
        unknown): delivered at least once, never held for good. On the next
        start, stored events are delivered at once, held or not.

        An `event_id` already stored, given up on, or delivered by this
        process is not stored again. Raises OSError when the disk cannot
        take it, ValueError for an id that cannot name a file, TypeError or
        ValueError for data JSON cannot hold.
        """
        if self.url is None:
            return
        if not _EVENT_ID.fullmatch(event_id):
            raise ValueError(f"webhook event id {event_id!r} must match {_EVENT_ID.pattern}")
        async with self._emitting.hold(event_id):
            if event_id in self._pending or event_id in self._delivered:
                return
            created = datetime.fromtimestamp(self._clock(), timezone.utc)
            event = {"id": event_id, "type": type, "created_at": created.isoformat(),
                     "data": dict(data)}
            body = json.dumps(event, separators=(",", ":")).encode()
            if not await self._run_io(self._files.put, event_id, body):
                return
            self._pending[event_id] = _Pending(event_id, type, body, created.timestamp(),
                                               due=time.monotonic() + (HOLD_S if held else 0.0),
                                               held=held)
        log.info("webhook %s %s stored%s", type, event_id, " (held)" if held else "")
        if not held:
            self._wake.set()

    def release(self, event_ids: list[str]) -> None:
        """Deliver these held events now (their transaction committed)."""
        now = time.monotonic()
        for event_id in event_ids:
            pending = self._pending.get(event_id)
            if pending is not None and pending.held:
                pending.held = False
                pending.due = min(pending.due, now)
        self._wake.set()

    async def emit_ended(self, row: SessionRow) -> None:
        """`interview.ended` for the final row of an interview (completed or interrupted)."""
        event_id, data = interview_ended_event(row)
        await self.emit(INTERVIEW_ENDED, data, event_id=event_id)

    async def hold_all_ended(self, rows: list[SessionRow]) -> None:
        """`interview.ended` for rows a transaction is marking: stored, held.

        The transaction's `before_commit`: a receiver that reads the row on
        the event must find it committed (`release_all_ended`, after it).
        """
        for row in rows:
            event_id, data = interview_ended_event(row)
            await self.emit(INTERVIEW_ENDED, data, event_id=event_id, held=True)

    def release_all_ended(self, rows: list[SessionRow]) -> None:
        """The transaction that `hold_all_ended` was told of committed."""
        self.release([interview_ended_event(row)[0] for row in rows])

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = sorted((p for p in self._pending.values() if p.due <= now),
                         key=lambda p: p.created)
            for pending in due:
                try:
                    await self._attempt(pending)
                except Exception:
                    # The sender must outlive any one bad event: others depend on it.
                    log.exception("webhook %s: delivery failed unexpectedly", pending.event_id)
                    pending.due = time.monotonic() + self._policy.max_s
            self._wake.clear()
            waits = [p.due for p in self._pending.values()]
            timeout = None if not waits else max(0.0, min(waits) - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _attempt(self, pending: _Pending) -> None:
        outcome = await self._post(pending)
        if outcome is None:
            await self._run_io(self._files.discard, pending.event_id)
            self.delivered += 1
            del self._pending[pending.event_id]
            self._delivered[pending.event_id] = None
            if len(self._delivered) > _RECENTLY_DELIVERED:
                self._delivered.popitem(last=False)
            log.info("webhook %s %s delivered", pending.event_type, pending.event_id)
            return
        self.failed += 1
        pending.failures += 1
        age = self._clock() - pending.created
        if age >= self._policy.give_up_after_s:
            await self._run_io(self._files.give_up, pending.event_id)
            del self._pending[pending.event_id]
            self.given_up += 1
            log.error("webhook %s %s given up after %d attempts over %.0f s (last: %s); kept in "
                      "%s", pending.event_type, pending.event_id, pending.failures, age, outcome,
                      self._files.failed_dir)
            return
        delay = self._policy.delay(pending.failures)
        pending.due = time.monotonic() + delay
        log.warning("webhook %s not delivered (%s); attempt %d in %.1f s", pending.event_id,
                    outcome, pending.failures + 1, delay)

    async def _post(self, pending: _Pending) -> str | None:
        """POST the event once: None when delivered, else why not."""
        assert self._http is not None and self.url is not None
        headers = {
            "Content-Type": "application/json",
            "X-Signature": sign(self._secret, int(self._clock()), pending.body),
            "X-Webhook-Id": pending.event_id,
            "X-Webhook-Event": pending.event_type,
        }
        try:
            # No redirects: the signed event goes to WEBHOOK_URL or nowhere.
            async with self._http.post(self.url, data=pending.body, headers=headers,
                                       allow_redirects=False) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


class _EventFiles:
    """`<id>.json` per undelivered event, `failed/` for those given up on (blocking)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.failed_dir = directory / "failed"

    def put(self, event_id: str, body: bytes) -> bool:
        """Store the event; False if an event with this id is stored or given up on."""
        if self._path(event_id).exists() or (self.failed_dir / f"{event_id}.json").exists():
            return False
        write_atomically(self._path(event_id), body)
        return True

    def discard(self, event_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(event_id).unlink()
            fsync_directory(self.directory)

    def give_up(self, event_id: str) -> None:
        os.replace(self._path(event_id), self.failed_dir / f"{event_id}.json")
        fsync_directory(self.directory)
        fsync_directory(self.failed_dir)

    def load(self) -> list[tuple[str, str, bytes, float]]:
        """Every stored event: (id, type, body, created as unix seconds), oldest first."""
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        events = []
        for path in self.directory.glob("*.json"):
            try:
                body = path.read_bytes()
                event = json.loads(body)
                created = datetime.fromisoformat(event["created_at"]).timestamp()
                events.append((path.stem, str(event["type"]), body, created))
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, KeyError) as exc:
                target = self.failed_dir / f"{path.stem}.corrupt"
                os.replace(path, target)
                log.error("unreadable webhook event %s (%s) moved to %s", path.name, exc, target)
        return sorted(events, key=lambda e: e[3])

    def _path(self, event_id: str) -> Path:
        return self.directory / f"{event_id}.json"
