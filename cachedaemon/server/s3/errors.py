"""S3 errors: the exception the S3 endpoint raises and the XML body S3 answers it with.

:class:`S3Error` carries S3's error ``code``, its HTTP status (from :data:`STATUS`, S3's own
table, unless given), a message, extra elements (``Key``, ``BucketName``, ``Region``, ...) and
extra headers. :func:`from_daemon_error` maps the daemon's own exception tree
(:mod:`cachedaemon.errors`) to what an S3 client expects: a full cache is ``503 SlowDown``
with ``Retry-After`` (clients back off and retry), a failing bucket ``500 InternalError``
(retried), a stalled body ``400 RequestTimeout``, and so on. :func:`error_body` renders
``<Error><Code/><Message/>...<RequestId/></Error>``.

Pure; any shard.
"""

from __future__ import annotations

from cachedaemon.errors import (
    CacheDaemonError,
    CacheFull,
    InvalidArgument,
    InvalidKey,
    InvalidRange,
    NotFound,
    PreconditionFailed,
    RequestTimeout,
    TooLarge,
    Unavailable,
    UpstreamError,
)

#: HTTP status of each S3 error code we answer (from S3's error code list).
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidURI": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MetadataTooLarge": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "RequestTimeout": 400,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400,
}

#: Seconds a client is told to wait after a 503.
RETRY_AFTER_S = 1


class S3Error(Exception):
    """An S3 error answer (see the module docstring)."""

    def __init__(self, code: str, message: str, status: int | None = None, *,
                 extra: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS.get(code, 400)
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        if self.status == 503:
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_S))


def not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by cachedaemon's S3 endpoint")


def from_daemon_error(exc: CacheDaemonError) -> S3Error:
    """The S3 answer for one of the daemon's own errors."""
    if isinstance(exc, InvalidRange):
        return S3Error("InvalidRange", "The requested range is not satisfiable",
                       extra={"ActualObjectSize": str(exc.size)},
                       headers={"Content-Range": f"bytes */{exc.size}"})
    if isinstance(exc, InvalidKey):
        return S3Error("InvalidArgument", f"This object key is not supported: {exc.message}")
    if isinstance(exc, InvalidArgument):
        return S3Error("InvalidArgument", exc.message)
    if isinstance(exc, NotFound):
        return S3Error("NoSuchKey", "The specified key does not exist.")
    if isinstance(exc, PreconditionFailed):
        return S3Error("PreconditionFailed",
                       "At least one of the pre-conditions you specified did not hold",
                       extra={"Condition": "If-Match"})
    if isinstance(exc, TooLarge):
        return S3Error("EntityTooLarge",
                       f"Your proposed upload exceeds the maximum allowed size: {exc.message}")
    if isinstance(exc, RequestTimeout):
        return S3Error("RequestTimeout", "Your socket connection to the server was not read "
                       "from or written to within the timeout period.")
    if isinstance(exc, CacheFull):
        return S3Error("SlowDown", f"Please reduce your request rate: {exc.message}")
    if isinstance(exc, UpstreamError):
        return S3Error("InternalError",
                       f"We encountered an internal error. Please try again. ({exc.message})")
    if isinstance(exc, Unavailable):
        return S3Error("ServiceUnavailable", f"Please reduce your request rate: {exc.message}")
    return S3Error("InternalError",
                   f"We encountered an internal error. Please try again. ({exc.code})")


def error_body(err: S3Error, resource: str, request_id: str) -> bytes:
    from cachedaemon.server.s3.xmlio import E, document

    children = [E("Code", err.code), E("Message", err.message)]
    children += [E(name, value) for name, value in err.extra.items()]
    children += [E("Resource", resource), E("RequestId", request_id)]
    return document("Error", children, namespace=False)
