"""systemd's sd_notify datagram protocol (``READY=1``, ``STOPPING=1``, ``STATUS=...``).

When ``NOTIFY_SOCKET`` is set (systemd ``Type=notify``), :func:`notify` sends one datagram to
that AF_UNIX socket; a leading ``@`` means Linux's abstract namespace. Without the variable it
does nothing. Failures are logged, never raised: readiness reporting must not stop the daemon.
Called from shard 0's loop; a datagram send does not block.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("cachedaemon.server")


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); True if a datagram was sent."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify %r to %r failed: %s", state, address, exc)
        return False
    return True
