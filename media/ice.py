"""ICE configuration for the server's peers.

aiortc falls back to a public STUN server when given no ICE servers, and
aioice gathers every host address of the machine. The server always passes
its configured list (empty by default, so no STUN traffic leaves the host),
and `use_loopback_only()` makes aioice offer 127.0.0.1 alone, which aioice's
own host-address discovery leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

__all__ = ["rtc_configuration", "use_loopback_only"]


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_only() -> None:
    """Gather only 127.0.0.1 host candidates in this process (tests, single host)."""
    # aioice exposes no option for this; its module-level discovery function
    # is the one seam, looked up at gather time.
    aioice.ice.get_host_addresses = _loopback_addresses


def rtc_configuration(ice_servers: Iterable[Mapping[str, Any]]) -> RTCConfiguration:
    """An RTCConfiguration with exactly `ice_servers` (none: no STUN at all)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=server["urls"],
                username=server.get("username"),
                credential=server.get("credential"),
            )
            for server in ice_servers
        ]
    )
