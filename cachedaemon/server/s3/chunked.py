"""The ``aws-chunked`` request body: decoding the streaming payload forms of SigV4.

Current SDKs send object bodies in one of these forms (named by ``x-amz-content-sha256``,
with ``Content-Encoding: aws-chunked`` and the payload's length in
``x-amz-decoded-content-length``)::

    STREAMING-AWS4-HMAC-SHA256-PAYLOAD          <hex>;chunk-signature=<sig>\\r\\n<data>\\r\\n ...
                                                0;chunk-signature=<sig>\\r\\n\\r\\n
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER  as above, but the zero chunk is followed by
                                                <name>:<value>\\r\\n ... x-amz-trailer-signature:<sig>\\r\\n\\r\\n
    STREAMING-UNSIGNED-PAYLOAD-TRAILER          <hex>\\r\\n<data>\\r\\n ... 0\\r\\n<name>:<value>\\r\\n\\r\\n

:class:`AwsChunkedDecoder` reads such a body from the request (any split of the bytes), hands
out the payload as it arrives (never a whole chunk in memory: a chunk's bytes are passed on as
they come, its SHA-256 computed on the way), checks each chunk signature in turn with the
request's :class:`~cachedaemon.server.s3.sigv4.ChunkSigner` (a chunk is verified when it
ends; a bad one fails the request before anything is committed), collects the trailer
headers (only those announced in ``x-amz-trailer``) and checks the trailer signature, and
refuses anything malformed (``IncompleteBody``, ``InvalidRequest``) or a payload whose length is
not the announced one.

Used by the PUT and UploadPart handlers on the request's shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    ChunkSigner,
)

#: Longest chunk header line (size, extensions) and trailer section accepted.
MAX_LINE = 4096
MAX_TRAILER_BYTES = 16 * 1024
TRAILER_SIGNATURE = "x-amz-trailer-signature"


def _bad(message: str) -> S3Error:
    return S3Error("IncompleteBody", f"The aws-chunked request body is malformed: {message}")


class AwsChunkedDecoder:
    """Decodes one ``aws-chunked`` body (see the module doc). Iterate :meth:`payload` once;
    afterwards :attr:`trailers` holds the trailer headers (lower-case names)."""

    def __init__(self, read: Callable[[], Awaitable[bytes]], form: str,
                 signer: ChunkSigner | None, announced_trailers: list[str],
                 decoded_length: int | None) -> None:
        if form not in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
            raise ValueError(form)
        self._read = read
        self._signed = form in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self._trailer = form in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
        self._signer = signer if self._signed else None
        self._announced = {t.strip().lower() for t in announced_trailers if t.strip()}
        self._decoded_length = decoded_length
        self._buf = bytearray()
        self._eof = False
        self.trailers: dict[str, str] = {}
        self.payload_bytes = 0

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False at the end of the body."""
        if self._eof:
            return False
        data = await self._read()
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def _line(self, what: str) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > MAX_LINE:
                raise _bad(f"{what} line is too long")
            if not await self._fill():
                raise _bad(f"the body ended inside a {what}")

    async def payload(self) -> AsyncIterator[bytes]:
        while True:
            size, signature = self._parse_header(await self._line("chunk header"))
            digest = hashlib.sha256() if self._signer is not None else None
            left = size
            while left:
                if not self._buf and not await self._fill():
                    raise _bad("the body ended inside a chunk")
                piece = bytes(self._buf[:left])
                del self._buf[: len(piece)]
                left -= len(piece)
                if digest is not None:
                    digest.update(piece)
                self.payload_bytes += len(piece)
                if self._decoded_length is not None and \
                        self.payload_bytes > self._decoded_length:
                    raise _bad("the payload is longer than x-amz-decoded-content-length")
                yield piece
            if self._signer is not None:
                assert digest is not None
                if signature is None:
                    raise S3Error("SignatureDoesNotMatch", "a chunk of the signed body carries "
                                  "no chunk-signature")
                self._signer.check(self._signer.chunk(digest.hexdigest()), signature)
            if size == 0:
                break
            if await self._line("chunk end") != b"":
                raise _bad("a chunk's data is not followed by CRLF")
        if self._trailer:
            await self._read_trailers()
        else:
            # The final chunk's header is followed by an empty line.
            if await self._line("final chunk") != b"":
                raise _bad("the final chunk is not followed by an empty line")
        while not self._buf and await self._fill():
            pass
        if self._buf.strip():
            raise _bad("bytes follow the final chunk")
        if self._decoded_length is not None and self.payload_bytes != self._decoded_length:
            raise S3Error("IncompleteBody", "You did not provide the number of bytes specified "
                          "by the x-amz-decoded-content-length HTTP header")

    def _parse_header(self, line: bytes) -> tuple[int, str | None]:
        text = line.decode("latin-1")
        size_text, _, ext = text.partition(";")
        size_text = size_text.strip()
        if not size_text or len(size_text) > 16 or \
                any(c not in "0123456789abcdefABCDEF" for c in size_text):
            raise _bad(f"bad chunk size {size_text[:20]!r}")
        signature: str | None = None
        for item in ext.split(";") if ext else ():
            name, _, value = item.partition("=")
            if name.strip() == "chunk-signature":
                signature = value.strip()
        return int(size_text, 16), signature

    async def _read_trailers(self) -> None:
        lines: list[bytes] = []
        total = 0
        while True:
            line = await self._line("trailer")
            if line == b"":
                break
            total += len(line)
            if total > MAX_TRAILER_BYTES:
                raise _bad("the trailer is too long")
            lines.append(line)
        signature: str | None = None
        signed_text: list[str] = []
        for raw in lines:
            name, sep, value = raw.decode("latin-1").partition(":")
            name = name.strip().lower()
            if not sep:
                raise _bad(f"bad trailer line {raw[:40]!r}")
            if name == TRAILER_SIGNATURE:
                signature = value.strip()
                continue
            if name not in self._announced:
                raise S3Error("InvalidRequest", f"the trailer {name[:64]!r} was not announced "
                              "in x-amz-trailer")
            self.trailers[name] = value.strip()
            signed_text.append(f"{name}:{value.strip()}\n")
        missing = self._announced - set(self.trailers)
        if missing:
            raise _bad(f"the announced trailer {sorted(missing)[0]!r} is missing")
        if self._signer is not None:
            if signature is None:
                raise S3Error("SignatureDoesNotMatch", "the signed trailer carries no "
                              "x-amz-trailer-signature")
            digest = hashlib.sha256("".join(signed_text).encode("latin-1")).hexdigest()
            self._signer.check(self._signer.trailer(digest), signature)
