"""TURN credentials for candidates: the TURN REST API scheme.

coturn's `use-auth-secret` / `static-auth-secret` (and most TURN services)
accept a username `"<expiry unix time>:<id>"` with the password
`base64(HMAC-SHA1(secret, username))`. The server hands each client a fresh
pair that expires after `TURN_TTL_S`; the long-term secret never leaves it,
and `config.py` refuses static TURN passwords, which would go to anyone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from config import Config

__all__ = ["turn_credential", "client_ice_servers", "is_turn"]


def turn_credential(secret: str, username: str) -> str:
    """`base64(HMAC-SHA1(secret, username))`, the password for `username`."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def client_ice_servers(config: Config, now: float | None = None) -> list[dict[str, Any]]:
    """`ICE_SERVERS` for one client: TURN entries with a fresh, expiring pair."""
    if config.turn_secret is None:
        return [dict(server) for server in config.ice_servers]
    expires = int(time.time() if now is None else now) + config.turn_ttl_s
    username = f"{expires}:{secrets.token_hex(8)}"
    password = turn_credential(config.turn_secret, username)
    servers = []
    for server in config.ice_servers:
        entry = {"urls": server["urls"]}
        if is_turn(server):
            entry.update(username=username, credential=password)
        servers.append(entry)
    return servers


def is_turn(server: dict[str, Any]) -> bool:
    """Whether an `ICE_SERVERS` entry names a TURN server."""
    urls = server["urls"]
    return any(url.startswith(("turn:", "turns:")) for url in ([urls] if isinstance(urls, str) else urls))
