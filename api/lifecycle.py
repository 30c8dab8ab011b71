"""What starts with the application and stops with it (aiohttp cleanup contexts).

`storage_ctx` holds the data directory, the database, the webhook sender and
the row writer; `registry_ctx`, inside it, the live sessions, their media and
the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from api.instance import Instance
from api.keys import (
    CONFIG, FILE_IO, INSTANCE, LAYOUT, MEDIA, METRICS, MODELS, REGISTRY, RESUME_PARSER,
    NODE, REVIEW_KEYS, STORE, WEBHOOKS, WRITER,
)
from api.forward import FORWARDER, Forwarder
from api.node import Node
from api.resume_text import ResumeLimits, ResumeParser
from api.turn import is_turn
from engine.anomaly import AnomalySettings
from engine.registry import InterviewTable
from engine.review import ReviewKeys
from engine.session import InterviewSession
from media.metrics import MediaMetrics
from media.service import MediaService
from storage.disk import DiskReserve, RetentionSweeper
from storage.embedded import start_embedded, stop_embedded
from storage.nodes import NodeDirectory
from storage.outbox import Outbox
from storage.pg import DatabaseUnavailable, SessionStore
from storage.webhooks import RetryPolicy, WebhookSender
from storage.writer import SessionWriter

__all__ = ["storage_ctx", "registry_ctx"]

log = logging.getLogger(__name__)

REVIEW_SECRET = "review-tokens"  # its name in `server_secrets`


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    config, layout = app[CONFIG], app[LAYOUT]
    loop = asyncio.get_running_loop()
    file_io = app[FILE_IO] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="file-io")
    instance = app[INSTANCE] = await loop.run_in_executor(file_io, Instance, layout)
    app[RESUME_PARSER] = ResumeParser(ResumeLimits(
        timeout_s=config.resume_parse_timeout_s,
        memory_bytes=config.resume_parse_memory_mb * 1024 * 1024,
    ))
    embedded = None
    if config.database_url is None:
        embedded, dsn = await loop.run_in_executor(file_io, start_embedded, config.data_dir)
    else:
        dsn = config.database_url
    store = app[STORE] = SessionStore(dsn)
    await store.open()
    app[REVIEW_KEYS] = ReviewKeys(lambda: store.server_secret(REVIEW_SECRET))
    outbox = await loop.run_in_executor(file_io, Outbox, layout.outbox)
    # Before the writer: the rows its start-up sweep finds interrupted are
    # reported, and after it at shutdown, for the endings saved last.
    webhooks = app[WEBHOOKS] = WebhookSender(
        config.webhook_url, config.webhook_secret or "", layout.webhooks_dir,
        policy=RetryPolicy(max_s=config.webhook_retry_max_s),
    )
    await webhooks.start()
    writer = app[WRITER] = SessionWriter(
        store,
        outbox,
        server_instance=instance.instance_id,
        server_run=instance.run_id,
        stale_after_s=config.stale_after_s,
        on_interrupted=webhooks.hold_all_ended if webhooks.enabled else None,
        on_interrupted_saved=webhooks.release_all_ended if webhooks.enabled else None,
    )
    await writer.start()
    try:
        yield
    finally:
        await writer.close()
        await webhooks.close()
        await store.close()
        if embedded is not None:
            await loop.run_in_executor(file_io, stop_embedded, embedded)
        instance.release()
        file_io.shutdown(wait=False)


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    webhooks = app[WEBHOOKS]
    registry = app[REGISTRY] = InterviewTable(
        app[WRITER],
        checkpoint_s=config.checkpoint_s,
        heartbeat_s=config.stale_after_s / 3,
        rejoin_grace_s=config.rejoin_grace_s,
        anomaly_settings=AnomalySettings(device_labels=config.device_labels),
        invite_ttl_s=config.invite_ttl_s,
        on_ended=webhooks.emit_ended if webhooks.enabled else None,
    )
    await _restore_invitations(app, registry)
    metrics = app[METRICS] = _metrics(app, registry)
    reserve = DiskReserve(config.data_dir, config.disk_reserve_bytes)
    metrics.counter("interview_recordings_refused",
                    "Recordings not started: free space under DATA_DIR below DISK_RESERVE_MB",
                    lambda: reserve.recordings_refused)
    # The server's own peers use the STUN entries only: TURN passwords are
    # made per candidate, and the server is the side candidates can reach.
    stun_only = tuple(server for server in config.ice_servers if not is_turn(server))
    media = app[MEDIA] = MediaService(
        replace(config, ice_servers=stun_only), registry, metrics, models=app[MODELS],
        recordings=reserve,
    )
    layout = app[LAYOUT]
    retention = RetentionSweeper((layout.recordings_dir, layout.evidence_dir),
                                 config.recording_retention_s, executor=app[FILE_IO])
    metrics.counter("interview_retention_files_deleted",
                    "Recordings and evidence deleted past RECORDING_RETENTION_DAYS",
                    lambda: retention.files_deleted)
    webhooks = app[WEBHOOKS]
    node = app[NODE] = Node(
        config, app[INSTANCE], registry, media,
        NodeDirectory(app[STORE], dead_after_s=config.node_dead_s),
        on_interrupted=webhooks.hold_all_ended if webhooks.enabled else None,
        on_interrupted_saved=webhooks.release_all_ended if webhooks.enabled else None,
    )
    metrics.counter("interview_node_sweep_interrupted",
                    "Interviews of dead nodes this node marked interrupted",
                    lambda: node.interrupted_by_sweep)
    metrics.counter("interview_node_heartbeats_failed", "Heartbeats the directory did not take",
                    lambda: node.beats_failed)
    metrics.gauge("interview_node_draining", "1 while this node drains", lambda: node.draining)
    await registry.start()
    media.start()
    await retention.start()
    forwarder = app[FORWARDER] = Forwarder()
    metrics.counter("interview_forwarded_requests",
                    "Calls about a session another node holds, forwarded there",
                    lambda: forwarder.forwarded)
    await node.start()
    try:
        yield
    finally:
        await retention.close()
        # Shutdown (SIGTERM included) ends and saves every live session,
        # closing its media first, briefly.
        media.hurry()
        await registry.end_all()
        await node.close()  # holds nothing now: out of the directory
        await forwarder.close()
        await media.close()
        await registry.close()


def _metrics(app: web.Application, registry: InterviewTable) -> MediaMetrics:
    metrics = MediaMetrics()
    ProcessCollector(registry=metrics.registry)  # CPU seconds and RSS of this process
    metrics.gauge("interview_live_sessions", "Live interview sessions", lambda: len(registry))
    writer = app[WRITER]
    metrics.gauge("interview_outbox_rows", "Rows waiting in the durable outbox",
                  lambda: writer.outbox_size)
    metrics.counter("interview_db_write_failures", "Row writes the database refused or missed",
                    lambda: writer.write_failures)
    metrics.counter("interview_rows_quarantined",
                    "Rows the database refused for their content, and unreadable outbox files, "
                    "kept in DATA_DIR/outbox/quarantine", lambda: writer.rows_quarantined)
    metrics.gauge("interview_rows_held",
                  "Rows in memory only: neither the database nor the disk took them yet",
                  lambda: writer.held_size)
    webhooks = app[WEBHOOKS]
    metrics.registry.register(_WebhookAttempts(webhooks))
    metrics.gauge("interview_webhook_pending", "Webhook events stored, not delivered yet",
                  lambda: webhooks.pending)
    metrics.counter("interview_webhook_given_up",
                    "Webhook events undelivered for too long, kept in DATA_DIR/webhooks/failed",
                    lambda: webhooks.given_up)
    return metrics


class _WebhookAttempts(Collector):
    """`interview_webhook_attempts_total{outcome}`: POSTs answered 2xx, and the others."""

    def __init__(self, webhooks: WebhookSender) -> None:
        self._webhooks = webhooks

    def collect(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "interview_webhook_attempts", "Webhook deliveries tried, by outcome (delivered: "
            "answered 2xx; failed: another status, no answer, or no connection)",
            labels=["outcome"])
        attempts.add_metric(["delivered"], self._webhooks.delivered)
        attempts.add_metric(["failed"], self._webhooks.failed)
        yield attempts


async def _restore_invitations(app: web.Application, table: InterviewTable) -> None:
    """Invitations handed out by an earlier run wait again (a restart or a
    deploy must not turn them into `interrupted` rows)."""
    instance = app[INSTANCE]
    try:
        rows = await app[STORE].fetch_scheduled(instance.instance_id)
    except DatabaseUnavailable as exc:
        log.warning("open invitations not restored, the database is unavailable: %s", exc)
        return
    loop = asyncio.get_running_loop()
    restored = 0
    for row in rows:
        session = InterviewSession.from_invitation(row)
        if session is None:
            continue
        session.server_run = instance.run_id
        path = app[LAYOUT].resume(session.session_id)
        pdf = await loop.run_in_executor(app[FILE_IO], _read_if_any, path)
        if pdf is not None:
            session.resume_text = await app[RESUME_PARSER].text_of(pdf)
        restored += table.restore(session)
    if restored:
        log.info("restored %d open invitation(s)", restored)


def _read_if_any(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
