"""What starts with the application and stops with it (aiohttp cleanup contexts).

`storage_ctx` holds the data directory, the database and the row writer;
`registry_ctx`, inside it, the live sessions, their media and the metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from aiohttp import web
from prometheus_client import ProcessCollector

from api.instance import Instance
from api.keys import (
    CONFIG, FILE_IO, INSTANCE, LAYOUT, MEDIA, METRICS, MODELS, REGISTRY, RESUME_PARSER, STORE,
    WRITER,
)
from api.resume_text import ResumeLimits, ResumeParser
from api.turn import is_turn
from engine.anomaly import AnomalySettings
from engine.registry import InterviewTable
from media.metrics import MediaMetrics
from media.service import MediaService
from storage.embedded import start_embedded, stop_embedded
from storage.outbox import Outbox
from storage.pg import SessionStore
from storage.writer import SessionWriter

__all__ = ["storage_ctx", "registry_ctx"]


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
    outbox = await loop.run_in_executor(file_io, Outbox, layout.outbox)
    writer = app[WRITER] = SessionWriter(
        store,
        outbox,
        server_instance=instance.instance_id,
        server_run=instance.run_id,
        stale_after_s=config.stale_after_s,
    )
    await writer.start()
    try:
        yield
    finally:
        await writer.close()
        await store.close()
        if embedded is not None:
            await loop.run_in_executor(file_io, stop_embedded, embedded)
        instance.release()
        file_io.shutdown(wait=False)


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    registry = app[REGISTRY] = InterviewTable(
        app[WRITER],
        checkpoint_s=config.checkpoint_s,
        heartbeat_s=config.stale_after_s / 3,
        rejoin_grace_s=config.rejoin_grace_s,
        anomaly_settings=AnomalySettings(device_labels=config.device_labels),
    )
    metrics = app[METRICS] = _metrics(app, registry)
    # The server's own peers use the STUN entries only: TURN passwords are
    # made per candidate, and the server is the side candidates can reach.
    stun_only = tuple(server for server in config.ice_servers if not is_turn(server))
    media = app[MEDIA] = MediaService(
        replace(config, ice_servers=stun_only), registry, metrics, models=app[MODELS]
    )
    await registry.start()
    try:
        yield
    finally:
        # Shutdown (SIGTERM included) ends and saves every live session,
        # closing its media first.
        await registry.end_all()
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
    return metrics
