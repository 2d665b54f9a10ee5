"""AWS Signature Version 4 for S3 requests: the server's side, verification.

A :class:`Verifier` (one per shard, holding the configured credentials and region) checks a
request the way S3 does and returns a :class:`Signature` describing what the body must then
prove (its ``x-amz-content-sha256``), or raises :class:`~cachedaemon.server.s3.errors.S3Error`:

* **Header auth**: ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/s3/aws4_request,
  SignedHeaders=a;b, Signature=hex`` with ``x-amz-date`` (or ``Date``) and
  ``x-amz-content-sha256``. Every ``x-amz-*`` header present must be signed (S3's
  ``HeadersNotSigned``).
* **Presigned URLs**: ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires`` (at most 7 days), ``X-Amz-SignedHeaders``, ``X-Amz-Signature`` in the query;
  the payload is ``UNSIGNED-PAYLOAD`` unless a header says otherwise. Past its expiry the
  request is ``AccessDenied`` ("Request has expired").
* A request time more than 15 minutes from the server's clock is ``RequestTimeTooSkewed``; a
  wrong access key ``InvalidAccessKeyId``; a scope for another region
  ``AuthorizationHeaderMalformed`` naming the right one (clients then re-sign); a wrong
  signature ``SignatureDoesNotMatch`` with the string to sign and canonical request, as S3
  gives them.

The canonical request follows S3's rules: the path is URI-encoded once (S3 does not normalise
it); the server rebuilds it from the decoded path and, if that does not match, also tries the
path exactly as sent (clients differ in which characters they escape). Query parameters are
decoded, re-encoded (RFC 3986 unreserved characters kept) and sorted; header values are
trimmed with inner runs of spaces folded.

The legacy Signature Version 2 (``Authorization: AWS ...``, and the ``AWSAccessKeyId``/
``Signature``/``Expires`` presigned URLs boto3 makes by default) is verified too
(:mod:`cachedaemon.server.s3.sigv2`).

The streaming payload forms (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``) sign each chunk
and the trailer, chained from the request's seed signature: :class:`ChunkSigner` computes those
signatures for :mod:`cachedaemon.server.s3.chunked`.

With no credentials configured the endpoint is open: nothing is verified, but the payload form
is still reported (an ``aws-chunked`` body must still be decoded). Pure apart from the clock;
one instance per shard.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_tz

from cachedaemon.server.s3 import sigv2
from cachedaemon.server.s3.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_FORMS = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER,
                             STREAMING_UNSIGNED_TRAILER})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW_S = 15 * 60
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
SERVICE = "s3"

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
#: Bytes that stay as they are: RFC 3986's unreserved characters (and ``/`` in a path).
_RESERVED_PATH = re.compile(rb"[^A-Za-z0-9\-._~/]")
_RESERVED_QUERY = re.compile(rb"[^A-Za-z0-9\-._~]")
#: Text already in canonical form (nothing to decode or encode).
_PLAIN = re.compile(r"[A-Za-z0-9\-._~]*")


def _pct(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m.group()[0]
_SPACES = re.compile(r"\s+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"(\d{8})T\d{6}Z")


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True, slots=True)
class Signature:
    """What a verified (or, with no credentials, merely parsed) request tells about its body.

    ``payload``: the ``x-amz-content-sha256`` value (a hex digest the body must match,
    ``UNSIGNED-PAYLOAD`` or a streaming form). ``signer`` chains the chunk signatures of a
    signed streaming body (None when nothing is verified)."""

    payload: str
    access_key_id: str | None = None
    presigned: bool = False
    signer: ChunkSigner | None = None


def _pct_decode(raw: str) -> bytes:
    data = raw.encode("utf-8", "surrogateescape")
    if b"%" not in data:
        return data
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def uri_encode_path(raw_path: str) -> str:
    """S3's canonical URI of a raw request path: decoded, then every byte but the unreserved
    ones and ``/`` percent-encoded (upper-case hex)."""
    return _RESERVED_PATH.sub(_pct, _pct_decode(raw_path)).decode("ascii") or "/"


def _encode_query(value: bytes) -> str:
    return _RESERVED_QUERY.sub(_pct, value).decode("ascii")


def canonical_query(raw_query: str, *, drop_signature: bool = False) -> str:
    """The canonical query string of a raw query (``X-Amz-Signature`` left out if asked)."""
    if not raw_query:
        return ""
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        n = name if _PLAIN.fullmatch(name) else _encode_query(_pct_decode(name))
        if drop_signature and n == "X-Amz-Signature":
            continue
        pairs.append((n, value if _PLAIN.fullmatch(value) else
                      _encode_query(_pct_decode(value))))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    lines = []
    for name in signed:
        value = headers.get(name)
        lines.append(f"{name}:{_SPACES.sub(' ', value.strip()) if value is not None else ''}\n")
    return "".join(lines)


def canonical_request(method: str, uri: str, query: str, headers: Mapping[str, str],
                      signed: list[str], payload: str) -> str:
    return "\n".join((method, uri, query, canonical_headers(headers, signed), ";".join(signed),
                      payload))


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope,
                      hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


_KEY_CACHE: dict[tuple[str, str, str, str], bytes] = {}


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """``kSigning`` of SigV4 (cached: it changes once a day)."""
    cache_key = (secret, date, region, service)
    key = _KEY_CACHE.get(cache_key)
    if key is None:
        k = _hmac(("AWS4" + secret).encode("utf-8"), date)
        k = _hmac(k, region)
        k = _hmac(k, service)
        key = _hmac(k, "aws4_request")
        if len(_KEY_CACHE) > 64:
            _KEY_CACHE.clear()
        _KEY_CACHE[cache_key] = key
    return key


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


class ChunkSigner:
    """The signature chain of a signed ``aws-chunked`` body: each chunk's signature signs the
    previous one (the first, the request's) and the chunk's SHA-256; the trailer's signs the
    last chunk's and the trailer lines."""

    __slots__ = ("amz_date", "key", "previous", "scope")

    def __init__(self, key: bytes, amz_date: str, scope: str, seed: str) -> None:
        self.key = key
        self.amz_date = amz_date
        self.scope = scope
        self.previous = seed

    def chunk(self, chunk_sha256: str) -> str:
        return sign(self.key, "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope,
                                         self.previous, EMPTY_SHA256, chunk_sha256)))

    def trailer(self, trailer_sha256: str) -> str:
        return sign(self.key, "\n".join(("AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope,
                                         self.previous, trailer_sha256)))

    def check(self, expected: str, provided: str) -> None:
        """Accept ``provided`` as the next link of the chain, or raise SignatureDoesNotMatch."""
        if not hmac.compare_digest(expected, provided.lower()):
            raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does "
                          "not match the signature you provided (a chunk of the body).")
        self.previous = expected


def parse_amz_date(value: str) -> float:
    """Seconds since the epoch of an ``x-amz-date`` (``20130524T000000Z``)."""
    if not _AMZ_DATE.fullmatch(value):
        raise ValueError(value)
    fields = (int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
              int(value[11:13]), int(value[13:15]))
    if not (1 <= fields[1] <= 12 and 1 <= fields[2] <= 31 and fields[3] <= 23
            and fields[4] <= 59 and fields[5] <= 60):
        raise ValueError(value)
    return float(calendar.timegm((*fields, 0, 0, 0)))


def parse_http_date(value: str) -> float | None:
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    return float(calendar.timegm(parsed[:9])) - (parsed[9] or 0)


def _malformed(message: str, *, presigned: bool = False, extra: dict[str, str] | None = None
               ) -> S3Error:
    code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
    return S3Error(code, message, extra=extra)


def check_payload(payload: str | None) -> None:
    """Raise InvalidArgument unless ``payload``, the ``x-amz-content-sha256`` header (if any),
    has one of its forms: the one check of a request when there are no credentials."""
    if payload is not None and payload not in STREAMING_FORMS and payload != UNSIGNED_PAYLOAD \
            and not _HEX64.fullmatch(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                      "STREAMING-... or a SHA-256 in lower-case hex",
                      extra={"ArgumentName": "x-amz-content-sha256"})


class Verifier:
    """Checks requests against one set of credentials and one region (see the module doc)."""

    def __init__(self, credentials: Credentials | None, region: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.credentials = credentials
        self.region = region
        self.clock = clock

    @property
    def open(self) -> bool:
        return self.credentials is None

    def verify(self, method: str, raw_path: str, raw_query: str,
               headers: Mapping[str, str], virtual_bucket: str | None = None) -> Signature:
        """Verify a request; ``virtual_bucket`` is the bucket of a virtual-hosted one."""
        auth = headers.get("authorization")
        presigned = "X-Amz-Signature=" in raw_query or "X-Amz-Credential=" in raw_query
        payload = headers.get("x-amz-content-sha256")
        check_payload(payload)
        if self.credentials is None:
            return Signature(payload or UNSIGNED_PAYLOAD)
        if sigv2.is_v2(headers, raw_query):
            return self._verify_v2(method, raw_path, raw_query, headers, virtual_bucket,
                                   payload)
        if auth is not None and not presigned:
            return self._verify_header(method, raw_path, raw_query, headers, auth, payload)
        if presigned and auth is None:
            return self._verify_presigned(method, raw_path, raw_query, headers, payload)
        if auth is not None and presigned:
            raise S3Error("InvalidArgument", "Only one auth mechanism allowed; only the "
                          "X-Amz-Algorithm query parameter or the Authorization header may be "
                          "given")
        raise S3Error("AccessDenied", "Access Denied (the request is not signed)")

    # --- header auth -----------------------------------------------------------------------

    def _verify_header(self, method: str, raw_path: str, raw_query: str,
                       headers: Mapping[str, str], auth: str, payload: str | None) -> Signature:
        scheme, _, rest = auth.strip().partition(" ")
        if scheme != ALGORITHM:
            raise _malformed(f"Unsupported authorization type {scheme[:40]!r}")
        fields: dict[str, str] = {}
        for item in rest.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep:
                raise _malformed(f"the authorization header is malformed near {item[:40]!r}")
            fields[name.strip()] = value.strip()
        try:
            credential = fields["Credential"]
            signed = fields["SignedHeaders"].split(";")
            provided = fields["Signature"]
        except KeyError as exc:
            raise _malformed(f"the authorization header lacks {exc.args[0]}") from None
        amz_date = headers.get("x-amz-date")
        if amz_date is None:
            date_header = headers.get("date")
            when = parse_http_date(date_header) if date_header else None
            if when is None:
                raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                              "x-amz-date header")
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
        if payload is None:
            raise S3Error("InvalidRequest", "Missing required header for this request: "
                          "x-amz-content-sha256")
        scope_date, scope = self._check_credential(credential, presigned=False)
        when = self._check_time(amz_date, scope_date, presigned=False)
        del when
        if "host" not in signed:
            raise _malformed("the host header must be signed")
        unsigned = sorted(name for name in headers
                          if name.startswith("x-amz-") and name not in signed)
        if unsigned:
            raise S3Error("AccessDenied", "There were headers present in the request which "
                          "were not signed", extra={"HeadersNotSigned": ", ".join(unsigned)})
        key = self._check_signature(method, raw_path, raw_query, headers, signed, payload,
                                    amz_date, scope, scope_date, provided, presigned=False)
        signer = ChunkSigner(key, amz_date, scope, provided.lower()) \
            if payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER) else None
        assert self.credentials is not None
        return Signature(payload, self.credentials.access_key_id, False, signer)

    # --- presigned URLs ---------------------------------------------------------------------

    def _verify_presigned(self, method: str, raw_path: str, raw_query: str,
                          headers: Mapping[str, str], payload: str | None) -> Signature:
        params: dict[str, str] = {}
        for part in raw_query.split("&"):
            name, _, value = part.partition("=")
            if name.startswith("X-Amz-"):
                params[name] = urllib.parse.unquote(value)
        missing = [n for n in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                               "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature")
                   if n not in params]
        if missing:
            raise _malformed(f"Query-string authentication requires {', '.join(missing)}",
                             presigned=True)
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise _malformed("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
                             presigned=True)
        expires_raw = params["X-Amz-Expires"]
        if not expires_raw.isdigit():
            raise _malformed("X-Amz-Expires should be a number", presigned=True)
        expires = int(expires_raw)
        if expires > MAX_PRESIGN_EXPIRES_S:
            raise _malformed("X-Amz-Expires must be less than a week (in seconds) that is "
                             "604800", presigned=True)
        amz_date = params["X-Amz-Date"]
        scope_date, scope = self._check_credential(params["X-Amz-Credential"], presigned=True)
        try:
            when = parse_amz_date(amz_date)
        except ValueError:
            raise _malformed("X-Amz-Date must be in the ISO8601 Long Format "
                             "\"yyyyMMdd'T'HHmmss'Z'\"", presigned=True) from None
        if amz_date[:8] != scope_date:
            raise _malformed("the credential's date does not match X-Amz-Date", presigned=True)
        now = self.clock()
        if now > when + expires:
            raise S3Error("AccessDenied", "Request has expired", extra={
                "X-Amz-Expires": str(expires), "Expires": _iso(when + expires),
                "ServerTime": _iso(now)})
        if when - now > MAX_SKEW_S:
            raise S3Error("AccessDenied", "Request is not valid yet")
        signed = params["X-Amz-SignedHeaders"].split(";")
        if "host" not in signed:
            raise _malformed("the host header must be signed", presigned=True)
        self._check_signature(method, raw_path, raw_query, headers, signed,
                              payload or UNSIGNED_PAYLOAD, amz_date, scope, scope_date,
                              params["X-Amz-Signature"], presigned=True)
        if payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER):
            raise S3Error("InvalidRequest", "a presigned request cannot carry a signed "
                          "streaming payload")
        assert self.credentials is not None
        return Signature(payload or UNSIGNED_PAYLOAD, self.credentials.access_key_id, True)

    # --- signature version 2 ---------------------------------------------------------------

    def _verify_v2(self, method: str, raw_path: str, raw_query: str,
                   headers: Mapping[str, str], virtual_bucket: str | None,
                   payload: str | None) -> Signature:
        assert self.credentials is not None
        if payload in STREAMING_FORMS:
            raise S3Error("InvalidRequest", "a streaming payload needs AWS4-HMAC-SHA256")
        auth = headers.get("authorization")
        now = self.clock()
        if auth is not None:
            given, sep, provided = auth[4:].strip().rpartition(":")
            if not sep:
                raise S3Error("InvalidArgument", "AWS authorization header is invalid.  "
                              "Expected AwsAccessKeyId:signature")
            date = headers.get("date") or ""
            amz_date = headers.get("x-amz-date")
            when = parse_http_date(amz_date or date)
            if when is None:
                raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                              "x-amz-date header")
            if abs(now - when) > MAX_SKEW_S:
                raise S3Error("RequestTimeTooSkewed", "The difference between the request time "
                              "and the current time is too large.",
                              extra={"ServerTime": _iso(now),
                                     "MaxAllowedSkewMilliseconds": str(MAX_SKEW_S * 1000)})
            text = sigv2.string_to_sign(method, raw_path, raw_query, headers, date,
                                        virtual_bucket)
            sigv2.check(self.credentials.access_key_id, self.credentials.secret_access_key,
                        given, provided, text)
            return Signature(payload or UNSIGNED_PAYLOAD, self.credentials.access_key_id)
        params: dict[str, str] = {}
        query_amz: dict[str, str] = {}
        for part in raw_query.split("&"):
            name, _, value = part.partition("=")
            value = urllib.parse.unquote(value)
            if name in ("AWSAccessKeyId", "Signature", "Expires"):
                params[name] = value
            elif name.lower().startswith("x-amz-"):
                query_amz[name.lower()] = value
        expires = params.get("Expires", "")
        if not expires.isdigit():
            raise S3Error("AccessDenied", "Query-string authentication requires the Signature, "
                          "Expires and AWSAccessKeyId parameters")
        if now > int(expires):
            raise S3Error("AccessDenied", "Request has expired",
                          extra={"Expires": _iso(int(expires)), "ServerTime": _iso(now)})
        text = sigv2.string_to_sign(method, raw_path, raw_query, headers, expires,
                                    virtual_bucket, query_amz)
        sigv2.check(self.credentials.access_key_id, self.credentials.secret_access_key,
                    params.get("AWSAccessKeyId", ""), params.get("Signature", ""), text)
        return Signature(payload or UNSIGNED_PAYLOAD, self.credentials.access_key_id, True)

    # --- shared steps -----------------------------------------------------------------------

    def _check_credential(self, credential: str, *, presigned: bool) -> tuple[str, str]:
        """(scope date, scope) of ``AKID/DATE/REGION/s3/aws4_request``."""
        assert self.credentials is not None
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise _malformed(f"the credential {credential[:120]!r} is malformed; expecting "
                             "\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"",
                             presigned=presigned)
        akid, date, region, service, _ = parts
        if not hmac.compare_digest(akid.encode("utf-8", "replace"),
                                   self.credentials.access_key_id.encode("utf-8")):
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not "
                          "exist in our records.", extra={"AWSAccessKeyId": akid[:128]})
        if region != self.region:
            raise _malformed(f"the region '{region[:64]}' is wrong; expecting '{self.region}'",
                             presigned=presigned, extra={"Region": self.region})
        if service != SERVICE:
            raise _malformed(f"the service '{service[:64]}' is wrong; expecting 's3'",
                             presigned=presigned)
        if not re.fullmatch(r"\d{8}", date):
            raise _malformed(f"the credential date {date[:16]!r} is malformed",
                             presigned=presigned)
        return date, "/".join(parts[1:])

    def _check_time(self, amz_date: str, scope_date: str, *, presigned: bool) -> float:
        try:
            when = parse_amz_date(amz_date)
        except ValueError:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                          "x-amz-date header") from None
        if amz_date[:8] != scope_date:
            raise _malformed(f"Invalid credential date \"{scope_date}\". This date is not the "
                             "same as X-Amz-Date: \"" + amz_date[:8] + "\".",
                             presigned=presigned)
        now = self.clock()
        if abs(now - when) > MAX_SKEW_S:
            raise S3Error("RequestTimeTooSkewed", "The difference between the request time "
                          "and the current time is too large.", extra={
                              "RequestTime": amz_date, "ServerTime": _iso(now),
                              "MaxAllowedSkewMilliseconds": str(MAX_SKEW_S * 1000)})
        return when

    def _check_signature(self, method: str, raw_path: str, raw_query: str,
                         headers: Mapping[str, str], signed: list[str], payload: str,
                         amz_date: str, scope: str, scope_date: str, provided: str, *,
                         presigned: bool) -> bytes:
        assert self.credentials is not None
        region = scope.split("/")[1]
        key = signing_key(self.credentials.secret_access_key, scope_date, region)
        query = canonical_query(raw_query, drop_signature=presigned)
        uri = uri_encode_path(raw_path)
        candidates = [uri] if uri == raw_path else [uri, raw_path]
        first: tuple[str, str] | None = None
        for candidate in candidates:
            canonical = canonical_request(method, candidate, query, headers, signed, payload)
            to_sign = string_to_sign(amz_date, scope, canonical)
            if hmac.compare_digest(sign(key, to_sign), provided.lower()):
                return key
            if first is None:
                first = (canonical, to_sign)
        assert first is not None
        raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not "
                      "match the signature you provided. Check your key and signing method.",
                      extra={"AWSAccessKeyId": self.credentials.access_key_id,
                             "StringToSign": first[1], "SignatureProvided": provided[:128],
                             "CanonicalRequest": first[0]})


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
