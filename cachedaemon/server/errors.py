"""Exceptions -> JSON error responses (``{"error": {"code", "message"}}``).

The status and code come from the exception's ``http_status``/``code`` (``cachedaemon.errors``);
codes the external contract does not list (``deadline_exceeded``, ``io_error``, ...) are folded
into the contract's code for that status, so clients only ever see the documented codes.
Called by the error middleware of every shard; stateless.
"""

from __future__ import annotations

import json
import logging

from cachedaemon.errors import CacheDaemonError, CacheFull, InvalidRange, OutcomeUnknown
from cachedaemon.server import http as web

log = logging.getLogger("cachedaemon.server")

#: The codes of shared/API.md; anything else is mapped by status.
CONTRACT_CODES = frozenset({
    "invalid_key", "invalid_argument", "unauthorized", "not_found", "fenced", "read_only",
    "precondition_failed", "too_large", "invalid_range", "upstream_error", "cache_full",
    "unavailable", "request_timeout",
})
_CODE_FOR_STATUS = {400: "invalid_argument", 401: "unauthorized", 404: "not_found",
                    408: "request_timeout", 409: "fenced", 412: "precondition_failed",
                    413: "too_large",
                    416: "invalid_range", 502: "upstream_error", 503: "unavailable"}

#: Seconds a client is told to wait after a 503.
RETRY_AFTER_S = 1


def json_error(status: int, code: str, message: str,
               headers: dict[str, str] | None = None,
               extra: dict[str, str] | None = None) -> web.Response:
    error = {"code": code, "message": message}
    if extra:
        error.update(extra)
    body = json.dumps({"error": error})
    return web.Response(status=status, text=body, content_type="application/json",
                        headers=headers)


def error_response(exc: CacheDaemonError) -> web.Response:
    status = exc.http_status
    code = exc.code
    if code not in CONTRACT_CODES:
        code = _CODE_FOR_STATUS.get(status, "internal")
        if code == "internal":
            status = 500
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidRange):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if isinstance(exc, CacheFull):
        code = "cache_full"
    # A write that may have taken effect says so: 5xx alone means "not applied".
    extra = {"outcome": "unknown"} if isinstance(exc, OutcomeUnknown) else None
    return json_error(status, code, exc.message, headers, extra)


def internal_error(exc: BaseException) -> web.Response:
    log.error("internal error: %r", exc, exc_info=exc)
    return json_error(500, "internal", f"internal error: {type(exc).__name__}")
