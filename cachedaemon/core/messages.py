"""The messages shards exchange: frames, their msgpack encoding, and errors as data.

Shards share nothing (DESIGN.md "Process shape"): work crosses from one shard to another only
as a message naming a service and a method, with plain arguments (``None``, bools, numbers,
strings, bytes, lists, tuples, dicts; dataclasses and ``msgspec.Struct``s travel as their
fields). A frame is a 4-byte big-endian length and a msgpack array of five items::

    [kind, id, a, b, payload]
    CALL    0  id  "service.method"  deadline|nil   args (array)
    POST    1  0   "service.method"  nil            args (array)     no answer
    OK      2  id  nil               nil            the result
    ERROR   3  id  class name        message        the exception's fields (map)
    CANCEL  4  id  nil               nil            nil
    HELLO   5  shard  secret         pid            nil               first frame of a link

``deadline`` is an absolute ``time.monotonic()`` value: the monotonic clock is one clock for
every process of a host. Results are decoded as plain data unless the caller names a type
(:func:`decode_value`). An exception travels as its class name, message and public fields and
comes back as the same class when it is one of ours (the tree of
:class:`~cachedaemon.errors.CacheDaemonError`) or a common built-in; anything else becomes a
:class:`~cachedaemon.errors.CacheDaemonError` naming the original class.

Pure functions; used by :mod:`cachedaemon.core.channel` on every shard.
"""

from __future__ import annotations

import builtins
import struct
from typing import Any, TypeVar

import msgspec

from cachedaemon import errors

CALL, POST, OK, ERROR, CANCEL, HELLO = range(6)
HEADER = struct.Struct(">I")
#: Largest frame accepted (a forwarded kv batch plus headers fits with room to spare).
MAX_FRAME = 512 << 20

T = TypeVar("T")

Frame = tuple[int, int, Any, Any, msgspec.Raw]

_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(Frame)
_any_decoder = msgspec.msgpack.Decoder()
_NIL = msgspec.Raw(_encoder.encode(None))


class MessageError(errors.CacheDaemonError):
    """A frame that cannot be decoded, or a value that cannot be encoded."""


def encode_frame(kind: int, ident: int, a: Any = None, b: Any = None,
                 payload: Any = None) -> bytes:
    try:
        body = _encoder.encode((kind, ident, a, b, payload))
    except (TypeError, OverflowError) as exc:
        raise MessageError(f"cannot send {type(payload).__name__} across shards: {exc} "
                           "(only plain data crosses shards)") from exc
    return HEADER.pack(len(body)) + body


def decode_frame(body: bytes | memoryview) -> Frame:
    try:
        return _frame_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"malformed frame: {exc}") from exc


def decode_value(raw: msgspec.Raw, kind: type[T] | None = None) -> Any:
    """A payload as plain data, or as ``kind`` (a dataclass, Struct, ...) when given."""
    if kind is None:
        return _any_decoder.decode(raw)
    return msgspec.msgpack.decode(raw, type=kind)


# --- exceptions as data ------------------------------------------------------------------------

_BUILTINS: dict[str, type[BaseException]] = {
    name: cls for name, cls in vars(builtins).items()
    if isinstance(cls, type) and issubclass(cls, Exception)
}


def _ours() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    stack: list[type[BaseException]] = [errors.CacheDaemonError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def error_fields(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """``(class name, message, fields)`` of an exception, for an ERROR frame."""
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        message = str(exc)
    fields = {k: v for k, v in vars(exc).items() if not k.startswith("_") and _plain(v)}
    if isinstance(exc, OSError):
        fields["errno"] = exc.errno
        fields["strerror"] = exc.strerror
    return type(exc).__name__, message, fields


def rebuild_error(name: str, message: str, fields: dict[str, Any]) -> BaseException:
    """The exception an ERROR frame describes (see the module doc)."""
    cls = _ours().get(name) or _BUILTINS.get(name)
    if cls is None:
        return errors.CacheDaemonError(f"{name}: {message}")
    if issubclass(cls, OSError):
        return cls(fields.get("errno"), fields.get("strerror") or message)
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    for key, value in fields.items():
        setattr(exc, key, value)
    if isinstance(exc, errors.CacheDaemonError):
        exc.message = message
    return exc
