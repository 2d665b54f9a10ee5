"""The L1 metastore's error kinds (Redpanda's ``missing_ntp``, ``invalid_request``,
``out_of_range``, ``transport_error``), as subclasses of the daemon's exception tree so the
server maps them to HTTP 404 / 400 / 416 / 502 by their ``http_status`` and ``code``.

Raised by :mod:`cachedaemon.metastore.l1.metastore` and the GC; re-raised by the client
(:mod:`cachedaemon.client.l1`) from an error response. Plain exception classes; no state.
"""

from __future__ import annotations

from cachedaemon.errors import CacheDaemonError, InvalidArgument, NotFound, UpstreamError


class MissingPartition(NotFound):
    """The partition (topic uuid, partition) has no metadata row in this domain."""


class InvalidRequest(InvalidArgument):
    """The request cannot be applied as it stands; ``reason`` says why (fix the input)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutOfRange(CacheDaemonError):
    """An offset, term or timestamp outside what the partition holds. HTTP 416, code
    ``invalid_range`` (the contract's code for 416)."""

    code = "invalid_range"
    http_status = 416


class TransportError(UpstreamError):
    """The bucket or the domain's log failed while carrying out the operation."""
