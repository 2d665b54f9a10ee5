"""The exception tree of cachedaemon.

Every error cachedaemon raises on purpose derives from :class:`CacheDaemonError`. Each class
carries the HTTP status and the error ``code`` of the external contract (``shared/API.md``), so
the server maps an exception to a response by reading two attributes, and the client maps a
response back to the same class by its code (:func:`error_for_code`).

Library exceptions (botocore, OSError, aiohttp) are translated at the boundary that sees them
(``raise X from exc``); code above that boundary only sees this tree. Misses are values
(``None``), faults are exceptions.

Used from every shard; the classes hold no state beyond their message and fields.
"""

from __future__ import annotations

from typing import ClassVar


class CacheDaemonError(Exception):
    """Base of every cachedaemon error. ``code``/``http_status`` follow the API contract."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__


# --- bad input ---------------------------------------------------------------------------


class InvalidArgument(CacheDaemonError):
    """A request argument, body or query parameter is malformed. Fix the input."""

    code = "invalid_argument"
    http_status = 400


class InvalidKey(InvalidArgument):
    """An object key breaks the key rules (see ``cachedaemon.cache.keys``)."""

    code = "invalid_key"
    http_status = 400


class ConfigError(CacheDaemonError):
    """A setting is invalid. Names the setting, where its value came from, and the problem."""

    code = "invalid_config"
    http_status = 500

    def __init__(self, setting: str, source: str, problem: str) -> None:
        self.setting = setting
        self.source = source
        self.problem = problem
        super().__init__(f"invalid setting {setting} (from {source}): {problem}")


class Unauthorized(CacheDaemonError):
    code = "unauthorized"
    http_status = 401


class NotFound(CacheDaemonError):
    """No such object, key or domain."""

    code = "not_found"
    http_status = 404


class Fenced(CacheDaemonError):
    """A newer writer owns the domain; this one stepped down."""

    code = "fenced"
    http_status = 409


class ReadOnly(CacheDaemonError):
    """The domain (or the daemon) is open read-only."""

    code = "read_only"
    http_status = 409


class PreconditionFailed(CacheDaemonError):
    """A conditional write lost: the object exists (put-if-absent) or its etag differs."""

    code = "precondition_failed"
    http_status = 412


class RequestTimeout(CacheDaemonError):
    """The request body stalled: no byte arrived for ``server.body_timeout``."""

    code = "request_timeout"
    http_status = 408


class TooLarge(CacheDaemonError):
    code = "too_large"
    http_status = 413


class InvalidRange(CacheDaemonError):
    """An unsatisfiable byte range. ``size`` is the object's size for ``Content-Range``."""

    code = "invalid_range"
    http_status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


# --- failures of the machinery ---------------------------------------------------------------


class UpstreamError(CacheDaemonError):
    """The bucket failed (after retries, if any were allowed)."""

    code = "upstream_error"
    http_status = 502


class OutcomeUnknown(UpstreamError):
    """A write failed after it may have taken effect (its log append or bucket write was
    started and its answer lost): it may or may not be applied. Read to find out; retry only
    what is harmless to apply twice. The HTTP answer says ``"outcome": "unknown"``."""


class TransientUpstreamError(UpstreamError):
    """A bucket failure worth retrying: throttling, 5xx, connection reset, timeout."""

    retryable = True


class Unavailable(CacheDaemonError):
    """The service cannot take the request now (shutting down). Retry elsewhere or later."""

    code = "unavailable"
    http_status = 503


class DaemonUnreachable(Unavailable):
    """The client could not reach the daemon (connection refused, reset or lost). Raised by
    :mod:`cachedaemon.client`, never by the daemon."""


class DeadlineExceeded(Unavailable):
    """A wait ran out of time before what it waited for happened."""

    code = "deadline_exceeded"
    http_status = 503


class CacheFull(DeadlineExceeded):
    """No cache space could be reserved before the deadline."""

    code = "cache_full"
    http_status = 503


class SemaphoreTimedOut(DeadlineExceeded):
    """A named semaphore's wait ran past its deadline."""


class SemaphoreBroken(Unavailable):
    """A named semaphore was broken (its owner is stopping)."""


class GateClosed(Unavailable):
    """A gate was entered after ``close()`` began: the owning service is stopping."""


class ShuttingDown(Unavailable):
    """Work was interrupted because the process or service is stopping."""


class ShardStopped(Unavailable):
    """A cross-shard call targeted a shard whose loop is not running."""


class Corruption(CacheDaemonError):
    """Stored bytes failed a checksum or a format check. Never served as data."""

    code = "corruption"
    http_status = 500


class IOFailure(CacheDaemonError):
    """A local or remote I/O step failed in a way the caller cannot fix by changing input."""

    code = "io_error"
    http_status = 502


class FailPointTriggered(CacheDaemonError):
    """Raised by an armed fail point (tests only)."""


_BY_CODE: dict[str, type[CacheDaemonError]] = {}


def _register(cls: type[CacheDaemonError]) -> None:
    # The most general class of a code wins, so ``deadline_exceeded`` maps to
    # DeadlineExceeded and not to one of its subclasses that shares the code.
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(CacheDaemonError)


def error_for_code(code: str) -> type[CacheDaemonError]:
    """The exception class for an API error code (``CacheDaemonError`` if unknown)."""
    return _BY_CODE.get(code, CacheDaemonError)
