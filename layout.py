"""Where things live: every path under `DATA_DIR` and every public URL.

Nothing else builds a path inside the data directory or a URL a row or a
client is given; they ask `DataLayout` and `PublicUrls`.

    DATA_DIR/
      .lock                 one server process per data directory
      instance_id           this data directory's stable server id
      postgres/             the embedded PostgreSQL cluster (no DATABASE_URL)
      outbox/               rows the database could not take yet
      outbox/quarantine/    rows it refused, outbox files unreadable: kept, not retried
      webhooks/<id>.json    webhook events not delivered yet (WEBHOOK_URL)
      webhooks/failed/      events given up on: kept, not retried
      models/               ASR models joined from packages when the per-user cache
                            ($XDG_CACHE_HOME or ~/.cache, /interview-media-server) is not
                            writable or there is no home directory
      resumes/<id>.pdf      uploaded resumes
      recordings/<id>.webm  finished recordings (`.webm.part` while recording)
      evidence/<id>/<name>  anomaly evidence pictures
      worker-<i>/           each worker's own layout, with WORKERS=N

With MEDIA_DIR, `resumes/`, `recordings/` and `evidence/` are there instead
(session ids are unique, so nodes sharing it never write the same file).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataLayout", "PublicUrls"]


@dataclass(frozen=True)
class DataLayout:
    root: Path
    # Resumes, recordings and evidence, when not under `root` (MEDIA_DIR: a
    # directory every node shares, so any node serves any interview's files).
    media_root: Path | None = None

    @property
    def media(self) -> Path:
        return self.media_root or self.root

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def instance_id_file(self) -> Path:
        return self.root / "instance_id"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def webhooks_dir(self) -> Path:
        return self.root / "webhooks"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def recordings_dir(self) -> Path:
        return self.media / "recordings"

    @property
    def evidence_dir(self) -> Path:
        return self.media / "evidence"

    def resume(self, session_id: uuid.UUID) -> Path:
        return self.media / "resumes" / f"{session_id}.pdf"

    def recording(self, session_id: uuid.UUID) -> Path:
        return self.recordings_dir / f"{session_id}.webm"

    def evidence(self, session_id: uuid.UUID, name: str) -> Path:
        return self.evidence_dir / str(session_id) / name

    def worker(self, index: int) -> DataLayout:
        return DataLayout(self.root / f"worker-{index}", self.media_root)


@dataclass(frozen=True)
class PublicUrls:
    """URLs under `base` ("" gives paths relative to the server)."""

    base: str = ""

    def join(self, session_id: uuid.UUID, token: str) -> str:
        return f"{self.base}/?session={session_id}&token={token}"

    def review(self, session_id: uuid.UUID, token: str) -> str:
        """The review page, opened with a review token (`review_url`)."""
        return f"{self.base}/review/{session_id}?token={token}"

    def review_page(self, session_id: uuid.UUID) -> str:
        """The review page without a token (the API key holder's sessions list)."""
        return f"{self.base}/review/{session_id}"

    def resume(self, session_id: uuid.UUID) -> str:
        return f"{self.base}/sessions/{session_id}/resume"

    def recording(self, session_id: uuid.UUID) -> str:
        return f"{self.base}/sessions/{session_id}/recording"

    def evidence(self, session_id: uuid.UUID, name: str) -> str:
        return f"{self.base}/sessions/{session_id}/evidence/{name}"

    def whip_resource(self, session_id: uuid.UUID) -> str:
        return f"{self.base}/whip/{session_id}/resource"
