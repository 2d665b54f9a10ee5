"""``FaultInjectingObjectStore``: makes chosen calls of an inner store fail or stall (tests).

Rules are added with :meth:`fail` and :meth:`delay`. A rule targets one operation (``get``,
``put``, ``head``, ``delete``, ``delete_many``, ``list``) or all (``op=None``), optionally only
calls whose ``key`` starts with a prefix (or satisfies a predicate; ``delete_many`` matches if
any of its keys does, ``list`` by its prefix), and fires either on the ``nth`` call of that
operation (1-based, counted by this wrapper; with a key filter, the nth call the filter
matched), or on a ``fraction`` of calls drawn from a seeded RNG (deterministic for a given seed
and call order), at most ``times`` times. A failure is raised ``before`` the inner call (the
request never reached the bucket) or ``after`` it (the bucket did the work and the answer was
lost: the case that makes retried conditional puts interesting; :meth:`land_then_fail` names
it). Rules are tried in the order they were added and one failure decides a call, so
``land_then_fail(op, nth=1)`` followed by ``fail(op)`` lands the first call and refuses every
retry (a write that is durable although the retry chain gave up). :meth:`fail_body` lets a ``get`` open and breaks its body after some bytes (a download cut
short). Delays sleep on the injected clock.

Used from one loop (the test's, or one shard's); not thread-safe.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from cachedaemon.clock import SYSTEM_CLOCK, Clock
from cachedaemon.errors import TransientUpstreamError
from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectStore,
    ObjectStoreBase,
    put_options,
)

T = TypeVar("T")

ExceptionFactory = Callable[[], BaseException]
#: Which keys a rule applies to: a prefix, or a predicate.
KeyFilter = str | Callable[[str], bool]


@dataclass
class FaultRule:
    op: str | None
    kind: Literal["fail", "delay", "body"]
    fraction: float = 1.0
    nth: int | None = None
    times: int | None = None
    exception: ExceptionFactory | None = None
    delay_s: float = 0.0
    when: Literal["before", "after"] = "before"
    after_bytes: int = 0
    key: KeyFilter | None = None
    fired: int = 0
    #: Calls this rule's op and key filter matched (``nth`` counts these when ``key`` is set).
    seen: int = 0

    def _key_matches(self, keys: Sequence[str]) -> bool:
        if self.key is None:
            return True
        if isinstance(self.key, str):
            prefix = self.key
            return any(k.startswith(prefix) for k in keys)
        return any(self.key(k) for k in keys)

    def matches(self, op: str, count: int, rng: random.Random, keys: Sequence[str] = ()) -> bool:
        if self.op is not None and self.op != op:
            return False
        if not self._key_matches(keys):
            return False
        self.seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None:
            return (self.seen if self.key is not None else count) == self.nth
        return self.fraction >= 1.0 or rng.random() < self.fraction


def _default_exception() -> BaseException:
    return TransientUpstreamError("injected fault")


class FaultInjectingObjectStore(ObjectStoreBase):
    """Wraps ``inner``; the armed rules decide which calls fail or stall."""

    def __init__(self, inner: ObjectStore, *, seed: int = 0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.inner = inner
        self.url = inner.url
        self.rng = random.Random(seed)
        self.clock = clock
        self.rules: list[FaultRule] = []
        #: Calls seen per operation (including failed ones).
        self.calls: Counter[str] = Counter()
        #: Faults raised per operation.
        self.injected: Counter[str] = Counter()

    def fail(
        self,
        op: str | None = None,
        *,
        fraction: float = 1.0,
        nth: int | None = None,
        times: int | None = None,
        exception: ExceptionFactory | BaseException | type[BaseException] | None = None,
        when: Literal["before", "after"] = "before",
        key: KeyFilter | None = None,
    ) -> FaultRule:
        """Fail matching calls with ``exception`` (default :class:`TransientUpstreamError`)."""
        rule = FaultRule(op, "fail", fraction, nth, times, _factory(exception), when=when, key=key)
        self.rules.append(rule)
        return rule

    def land_then_fail(
        self,
        op: str | None = None,
        *,
        key: KeyFilter | None = None,
        fraction: float = 1.0,
        nth: int | None = None,
        times: int | None = None,
        exception: ExceptionFactory | BaseException | type[BaseException] | None = None,
    ) -> FaultRule:
        """Let matching calls reach the bucket and do their work, then fail their answer
        (a write that landed although its caller was told it failed). With ``times=None``
        every matching call, retries included: the retry chain gives up although each PUT
        landed."""
        return self.fail(op, fraction=fraction, nth=nth, times=times, exception=exception,
                         when="after", key=key)

    def delay(
        self,
        op: str | None = None,
        *,
        seconds: float,
        fraction: float = 1.0,
        nth: int | None = None,
        times: int | None = None,
        key: KeyFilter | None = None,
    ) -> FaultRule:
        """Sleep ``seconds`` before matching calls."""
        rule = FaultRule(op, "delay", fraction, nth, times, delay_s=seconds, key=key)
        self.rules.append(rule)
        return rule

    def fail_body(
        self,
        *,
        after_bytes: int = 0,
        fraction: float = 1.0,
        nth: int | None = None,
        times: int | None = None,
        exception: ExceptionFactory | BaseException | type[BaseException] | None = None,
        key: KeyFilter | None = None,
    ) -> FaultRule:
        """Let matching ``get`` calls open, then fail their body once ``after_bytes`` passed
        (a connection that breaks mid-download)."""
        rule = FaultRule(
            "get", "body", fraction, nth, times, _factory(exception), after_bytes=after_bytes,
            key=key,
        )
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    async def _call(
        self,
        op: str,
        fn: Callable[[], Awaitable[T]],
        body_fault: list[FaultRule] | None = None,
        keys: Sequence[str] = (),
    ) -> T:
        """Apply the matching rules around ``fn``; a matching body rule goes to ``body_fault``."""
        self.calls[op] += 1
        count = self.calls[op]
        fail_after: FaultRule | None = None
        for rule in self.rules:
            if rule.kind == "fail" and fail_after is not None:
                continue  # one failure per call: the first fail rule that fires decides
            if not rule.matches(op, count, self.rng, keys):
                continue
            rule.fired += 1
            if rule.kind == "body":
                if body_fault is not None:
                    body_fault.append(rule)
            elif rule.kind == "delay":
                await self.clock.sleep(rule.delay_s)
            elif rule.when == "after":
                fail_after = rule
            else:
                self.injected[op] += 1
                assert rule.exception is not None
                raise rule.exception()
        result = await fn()
        if fail_after is not None:
            self.injected[op] += 1
            assert fail_after.exception is not None
            raise fail_after.exception()
        return result

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        body_fault: list[FaultRule] = []
        result = await self._call(
            "get", lambda: self.inner.get(key, byte_range=byte_range), body_fault, (key,)
        )
        if result is None or not body_fault:
            return result
        rule = body_fault[0]
        inner = result
        exception = rule.exception
        assert exception is not None
        limit = rule.after_bytes

        async def broken() -> AsyncIterator[bytes]:
            passed = 0
            async for chunk in inner.iter_chunks():
                if passed + len(chunk) > limit:
                    if limit > passed:
                        yield chunk[: limit - passed]
                    self.injected["get"] += 1
                    raise exception()
                passed += len(chunk)
                yield chunk
            if passed >= limit:  # the body ended exactly at (or before) the break point
                self.injected["get"] += 1
                raise exception()

        return GetResult(inner.info, inner.content_length, inner.range, broken(), inner.close)

    async def put(
        self,
        key: str,
        body: Body,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        meta: ObjectMeta | None = None,
        part_sizes: Sequence[int] | None = None,
        single_part: bool = False,
    ) -> ObjectInfo:
        return await self._call(
            "put",
            lambda: self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match,
                                   **put_options(meta, part_sizes, single_part)),
            keys=(key,),
        )

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._call("head", lambda: self.inner.head(key), keys=(key,))

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(key), keys=(key,))

    async def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        await self._call("delete_many", lambda: self.inner.delete_many(batch), keys=batch)

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        return await self._call(
            "list", lambda: self.inner.list(prefix, start_after, limit), keys=(prefix,)
        )

    async def close(self) -> None:
        await self.inner.close()


def _factory(
    exception: ExceptionFactory | BaseException | type[BaseException] | None,
) -> ExceptionFactory:
    if exception is None:
        return _default_exception
    if isinstance(exception, BaseException):
        instance = exception
        return lambda: instance
    if isinstance(exception, type):
        cls = exception
        return lambda: cls("injected fault")
    return exception
