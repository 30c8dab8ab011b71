"""Who this server process is, and its hold on the data directory."""

from __future__ import annotations

import fcntl
import uuid

from config import ConfigError
from layout import DataLayout

__all__ = ["Instance"]


class Instance:
    """A stable id per data directory, a run id per start, and the lock that
    keeps a second server process off the same data directory.

    Blocking file I/O: construct it in an executor.
    """

    def __init__(self, layout: DataLayout) -> None:
        layout.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(layout.lock_file, "w")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(
                f"DATA_DIR {layout.root} is in use by another server process"
            ) from None
        id_file = layout.instance_id_file
        if not id_file.exists():
            id_file.write_text(str(uuid.uuid4()))
        self.instance_id = id_file.read_text().strip()
        self.run_id = str(uuid.uuid4())

    def release(self) -> None:
        self._lock_file.close()
