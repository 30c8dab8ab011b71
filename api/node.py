"""This server as one node of several: its heartbeat, draining, the admin calls.

Every node writes a heartbeat to the node directory (`storage.nodes`) every
`NODE_HEARTBEAT_S`: its URL, its load, whether it admits new sessions, and
the interviews it holds. In the same loop it sweeps for nodes whose
heartbeat stopped and marks their open interviews `interrupted`.

Draining (`POST /admin/drain`, or SIGTERM with `DRAIN_TIMEOUT_S`): the node
takes no new sessions (`POST /sessions` answers 503, `/healthz` says
`draining` with a 503, so a load balancer sends new sessions elsewhere),
while the interviews it holds go on, calls and rejoins included, until they
end or the deadline passes; then the rest are saved and closed.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
import time
from collections.abc import Awaitable, Callable

from api.instance import Instance
from config import Config
from engine.aio import cancel_and_wait
from engine.interview import InterviewState
from engine.registry import InterviewTable
from engine.session import InterviewSession, SessionRow, SessionStatus, utc_now
from media.service import MediaService
from storage.nodes import NodeBeat, NodeDirectory
from storage.pg import DatabaseUnavailable

__all__ = ["Node"]

log = logging.getLogger(__name__)

_HOLDING = (InterviewState.LIVE, InterviewState.WAITING, InterviewState.ENDING,
            InterviewState.PARKED)


class Node:
    """This process in the node directory."""

    def __init__(
        self, config: Config, instance: Instance, registry: InterviewTable,
        media: MediaService, directory: NodeDirectory, *,
        on_interrupted: Callable[[list[SessionRow]], Awaitable[None]] | None = None,
        on_interrupted_saved: Callable[[list[SessionRow]], None] | None = None,
    ) -> None:
        self.node_id = instance.instance_id
        self._run_id = instance.run_id
        # An interview whose node died may go on here this long after its
        # last checkpoint: the candidate's rejoin window plus the time it
        # takes to see the node dead.
        self.continue_within_s = config.rejoin_grace_s + config.node_dead_s + 10.0
        self._config = config
        self._registry = registry
        self._media = media
        self.directory = directory
        self._on_interrupted = on_interrupted  # inside the sweep's transaction
        self._on_interrupted_saved = on_interrupted_saved  # after it committed
        # `POST /admin/drain` without a deadline: DRAIN_TIMEOUT_S, else half an hour.
        self.drain_default_s = config.drain_timeout_s or 1800.0
        self.url: str | None = config.node_url or (
            None if config.host in ("0.0.0.0", "::")
            else f"http://{_host_for_url(config.host)}:{config.port}")
        self.draining = False
        self.drain_deadline: float | None = None  # time.monotonic()
        self._drain_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self.beats_failed = 0
        self.interrupted_by_sweep = 0
        # A heartbeat releases what its snapshot did not hold: a claim made
        # between the snapshot and its write would be released with it.
        self._holding_lock = asyncio.Lock()

    async def start(self) -> None:
        self._beat_task = asyncio.create_task(self._beat_loop(), name="node-heartbeat")

    async def close(self) -> None:
        await cancel_and_wait(self._beat_task, self._drain_task)
        try:
            await asyncio.wait_for(self.directory.leave(self.node_id), 2.0)
        except (DatabaseUnavailable, asyncio.TimeoutError) as exc:
            log.warning("node %s: could not leave the directory: %s", self.node_id, exc)

    # -- admission -----------------------------------------------------------------

    def refusal(self) -> str | None:
        """Why this node takes no new session now, or None."""
        return "this node is draining: create the session on another node" if self.draining \
            else None

    def health(self) -> tuple[str, int]:
        """`/healthz`'s status and HTTP code: 503 tells a balancer to send new sessions elsewhere."""
        if self.draining:
            return "draining", 503
        media = self._media
        if media.load.refusal(len(media), continuing=False, count=False) is not None:
            return "full", 503
        return "ok", 200

    # -- draining ------------------------------------------------------------------

    def holding(self) -> int:
        """Interviews that started here and are not over (parked ones included)."""
        return sum(1 for i in self._registry.all()
                   if i.state in _HOLDING and i.record.start_time is not None)

    def drain(self, deadline_s: float) -> None:
        """Stop admitting; end what is left after `deadline_s` (idempotent)."""
        if self.draining:
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + deadline_s
        log.warning("node %s draining: %d interview(s) may go on for up to %.0f s",
                    self.node_id, self.holding(), deadline_s)
        self._drain_task = asyncio.create_task(self._drain(deadline_s), name="node-drain")

    def undrain(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None
        self.draining, self.drain_deadline = False, None
        log.info("node %s admits new sessions again", self.node_id)

    async def drained(self) -> None:
        """Wait until the drain is over (its interviews ended or closed)."""
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def _drain(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while self.holding() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        left = self.holding()
        if left:
            log.warning("node %s: drain deadline reached, closing %d interview(s)",
                        self.node_id, left)
        await self._registry.end_all()  # saves and closes whatever is left
        log.info("node %s drained", self.node_id)

    # -- taking over ---------------------------------------------------------------

    async def adopt(self, row: SessionRow) -> InterviewSession | None:
        """Go on here with an interview whose node died, from its last checkpoint.

        It can continue when its row is `in_progress` or `interrupted`, was
        checkpointed within `continue_within_s`, no live node holds it, and
        this node wins the claim; then the candidate's rejoin is its next
        call. The recording starts again here (the dead node never finished
        its part), and so does its clock.
        """
        if row.status not in (SessionStatus.IN_PROGRESS, SessionStatus.INTERRUPTED):
            return None
        checkpoint = (row.session_information or {}).get("checkpoint_at")
        try:
            age = (utc_now() - datetime.fromisoformat(str(checkpoint))).total_seconds()
        except ValueError:
            return None
        session = InterviewSession.from_checkpoint(row)
        if session is None or age > self.continue_within_s:
            return None
        async with self._holding_lock:
            kept = len(session.anomalies_detected)
            if not await self.directory.claim(row.session_id, self.node_id, kept_flags=kept):
                return None  # a live node holds it (or just took it)
            session.server_instance = self.node_id
            session.server_run = self._run_id
            return self._registry.adopt(session)

    # -- the heartbeat -------------------------------------------------------------

    def beat(self) -> NodeBeat:
        media = self._media
        return NodeBeat(
            node_id=self.node_id,
            node_index=self._config.worker_index,
            url=self.url,
            admits=self.health()[1] == 200,
            draining=self.draining,
            load=media.load.load,
            sessions=tuple(sorted(i.session_id for i in self._registry.all()
                                  if i.state in _HOLDING)),
        )

    async def _beat_loop(self) -> None:
        while True:
            try:
                async with self._holding_lock:
                    await self.directory.beat(self.beat())
                rows = await self.directory.sweep_dead(
                    self.node_id, self._on_interrupted, self._on_interrupted_saved)
                if rows:
                    self.interrupted_by_sweep += len(rows)
                    log.warning("marked %d interview(s) of dead node(s) interrupted: %s",
                                len(rows), ", ".join(str(r.session_id) for r in rows))
            except DatabaseUnavailable as exc:
                self.beats_failed += 1
                log.warning("node heartbeat failed (database unavailable): %s", exc)
            except Exception:
                self.beats_failed += 1
                log.exception("node heartbeat failed")
            await asyncio.sleep(self._config.node_heartbeat_s)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
