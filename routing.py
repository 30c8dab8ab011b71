"""Which worker owns a session: the one routing rule of `WORKERS=N`.

A session lives in one worker process, and its id says which, so any front
routes without shared state. The rule, for `N` workers:

- a call names a session when its path starts `/sessions/<id>` or
  `/whip/<id>`;
- the worker that owns `<id>` is the id's last byte (its last two hex
  digits) modulo `N`;
- worker `i` mints ids whose last byte is `i`, so an id keeps its worker when
  `N` grows, and ids minted with one worker spread evenly.

Nothing else in the project knows this rule. A standard proxy reproduces it
from the path alone; in HAProxy (2.6, `deploy/haproxy.cfg`, run by
tests/test_topology.py), with one backend per node:

    http-request set-var(txn.node) path,field(3,/),bytes(34,2),hex2i,mod(N) if names_session
    use_backend node%[var(txn.node)] if names_session
"""

from __future__ import annotations

import uuid

__all__ = ["MAX_WORKERS", "new_session_id", "session_in_path", "worker_of"]

MAX_WORKERS = 256  # one byte of the id names the worker

_SESSION_PREFIXES = ("/sessions/", "/whip/")


def worker_of(session_id: uuid.UUID, workers: int) -> int:
    """The index of the worker, of `workers`, that owns `session_id`."""
    return session_id.bytes[-1] % workers


def new_session_id(worker_index: int | None) -> uuid.UUID:
    """A random session id that worker `worker_index` owns (`None`: any id).

    Only 8 of the id's 122 random bits are fixed; it is still a version-4
    UUID, and the session token, not the id, is the secret.
    """
    session_id = uuid.uuid4()
    if worker_index is None:
        return session_id
    if not 0 <= worker_index < MAX_WORKERS:
        raise ValueError(f"worker_index must be from 0 to {MAX_WORKERS - 1}, got {worker_index}")
    return uuid.UUID(bytes=session_id.bytes[:-1] + bytes([worker_index]))


def session_in_path(path: str) -> uuid.UUID | None:
    """The session a request path names, or `None` (no id, or not a UUID)."""
    for prefix in _SESSION_PREFIXES:
        if path.startswith(prefix):
            segment = path[len(prefix):].split("/", 1)[0]
            try:
                return uuid.UUID(segment)
            except ValueError:
                return None  # the worker answers a malformed id with its own 400
    return None
