"""How the client spells requests and reads error responses: path encoding of object keys,
key-value keys and domain names, base64 for JSON, query strings, and the translation of an
error response (``{"error": {"code", "message"}}``) back into the exception tree.

Pure functions, shared by the async and the sync client; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from urllib.parse import quote

from cachedaemon.errors import (
    CacheDaemonError,
    InvalidArgument,
    InvalidRange,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unauthorized,
    Unavailable,
    UpstreamError,
    error_for_code,
)

# For a response without a JSON error body (HEAD, or a proxy in between).
_BY_STATUS: dict[int, type[CacheDaemonError]] = {
    400: InvalidArgument,
    401: Unauthorized,
    404: NotFound,
    412: PreconditionFailed,
    413: TooLarge,
    416: InvalidRange,
    502: UpstreamError,
    503: Unavailable,
}
_CONTENT_RANGE_SIZE = re.compile(r"bytes\s+(?:\*|\d+-\d+)/(\d+)")


def object_path(key: str) -> str:
    """``/v1/objects/<key>``: every byte but the unreserved characters and ``/`` escaped."""
    return "/v1/objects/" + quote(key, safe="/")


def cached_object_path(key: str) -> str:
    return "/v1/cache/objects/" + quote(key, safe="/")


def explain_path(key: str) -> str:
    return "/v1/cache/explain/" + quote(key, safe="/")


def as_key_bytes(key: bytes | str) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def kv_path(domain: str, key: bytes | str) -> str:
    """``/v1/kv/<domain>/<key>``. A key-value key is arbitrary bytes and one path segment, so
    ``/`` is escaped too."""
    return f"/v1/kv/{quote(domain, safe='')}/{quote(as_key_bytes(key), safe='')}"


def domain_path(domain: str, suffix: str = "") -> str:
    return f"/v1/domains/{quote(domain, safe='')}{suffix}"


def b64(data: bytes | str) -> str:
    return base64.b64encode(as_key_bytes(data)).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise InvalidArgument(f"expected base64 text from the daemon, got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"the daemon sent invalid base64 {text!r}") from exc


def query_string(params: Mapping[str, str | int | None]) -> str:
    """``?a=1&b=x`` with every reserved character escaped (base64 ``+``/``/``/``=`` included);
    ``None`` values left out."""
    parts = [
        f"{quote(name, safe='')}={quote(str(value), safe='')}"
        for name, value in params.items()
        if value is not None
    ]
    return "?" + "&".join(parts) if parts else ""


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str], *, what: str
) -> CacheDaemonError:
    """The exception for an error response: by the JSON ``code`` when there is one, else by the
    HTTP status. ``what`` (``"GET /v1/objects/k"``) is named in messages that lack one."""
    code: str | None = None
    message = ""
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = str(err.get("message") or "")
    if not message:
        message = f"{what}: HTTP {status}"
    cls = error_for_code(code) if code else _BY_STATUS.get(status, CacheDaemonError)
    if cls is CacheDaemonError and status in _BY_STATUS:
        cls = _BY_STATUS[status]
    if issubclass(cls, InvalidRange):
        m = _CONTENT_RANGE_SIZE.search(headers.get("Content-Range", ""))
        return cls(message, int(m.group(1)) if m else -1)
    try:
        return cls(message)
    except TypeError:  # a class with a richer constructor (ConfigError): keep the code's meaning
        return CacheDaemonError(message)
