"""Warm starts: publishing this node's hot set, and filling the cache from another's (shard 0).

**Publishing** (:class:`HotSetPublisher`): every ``cache.hotset_interval`` and at shutdown,
shard 0 takes the cache index in most-recently-used order (at most ``cache.max_objects``
entries, from the coordinator by :meth:`CacheService.hot_entries`), encodes it
(:mod:`cachedaemon.cache.hotset`) and puts it at ``.cachedaemon/hotset/<server.node_id>``.
A failed publish is logged and tried again at the next interval.

**Warming** (:class:`Warmer`): ``serve --warm-from NODE-ID|any`` at start, or ``POST
/v1/cache/warm`` (``cachedaemon warm``) on a running daemon. It reads the hot set (``any``: the
newest one in the bucket by its time, another node's if there is one), plans what to fetch —
most recently used first, within ``cache.warm_bytes`` and within the room the cache has below
its low watermark, so a warm-up never evicts anything (:func:`~cachedaemon.cache.hotset.plan`)
— and fetches ``cache.warm_concurrency`` objects at a time with class ``prefetch``
reservations (every read and write goes first, ``docs/cache.md``), until done or
``cache.warm_timeout``. A user object is filled as a GET's miss would be
(:func:`cachedaemon.server.objectops.prefetch`: registered with the per-key order, so a write
of the key in flight wins); a cached SST is put under its ``.cachedaemon/lsm/`` key as the
metastore's own reads do. Progress is :meth:`Warmer.status`, plain data. One warm-up at a time.

Both run on shard 0 (they use its store and its cache service); the other shards reach them
through the ``shard`` service (:mod:`cachedaemon.server.shard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from cachedaemon.cache.hotset import (
    HotEntry,
    HotSet,
    decode,
    encode,
    entries_from_lru,
    hotset_key,
    node_of,
    plan,
)
from cachedaemon.errors import CacheDaemonError, CacheFull, InvalidArgument, NotFound
from cachedaemon.namespace import HOTSET_ROOT
from cachedaemon.server import metrics, objectops
from cachedaemon.server.context import ShardContext

log = logging.getLogger("cachedaemon.warm")


class HotSetPublisher:
    """Publishes shard 0's hot set (see the module docstring)."""

    def __init__(self, ctx: ShardContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self.last: dict[str, Any] | None = None

    @property
    def node(self) -> str:
        return str(self.ctx.settings.server.node_id)

    async def publish(self, *, empty: bool = True) -> dict[str, Any]:
        """Publish now; returns ``{"node", "published", "entries", "bytes", "key"}``. Without
        ``empty``, an empty hot set is not published (the timer and shutdown: an idle node
        does not overwrite what it published when it had something)."""
        cache = self.ctx.cache.local()
        limit = self.ctx.settings.cache.max_objects
        items = await cache.hot_entries(limit)
        stats = await cache.stats()
        hotset = HotSet(self.node, time.time(), int(stats.max_bytes),
                        entries_from_lru(items, limit))
        if not hotset.entries and not empty:
            return {"node": self.node, "published": None, "entries": 0, "bytes": 0,
                    "key": hotset_key(self.node), "object_bytes": 0}
        data = await asyncio.to_thread(encode, hotset)
        key = hotset_key(self.node)
        await self.ctx.store.put(key, data)
        metrics.HOTSET_PUBLISHES.inc()
        self.last = {"node": self.node, "published": hotset.published,
                     "entries": len(hotset.entries), "bytes": hotset.total_bytes, "key": key,
                     "object_bytes": len(data)}
        log.info("hot set published to %s: %d objects, %d bytes (%d bytes compressed)",
                 key, len(hotset.entries), hotset.total_bytes, len(data))
        return self.last

    def start(self) -> None:
        interval = self.ctx.settings.cache.hotset_interval
        if interval > 0 and self._task is None:
            self._task = asyncio.ensure_future(self._loop(interval))

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.publish(empty=False)
            except (CacheDaemonError, OSError) as exc:
                metrics.HOTSET_PUBLISH_FAILURES.inc()
                log.warning("cannot publish the hot set: %s", exc)

    async def stop(self, *, publish: bool = True) -> None:
        """Stop the loop; with ``publish``, publish once more (shutdown), logging a failure."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if publish:
            try:
                await asyncio.wait_for(self.publish(empty=False), 10.0)
            except (CacheDaemonError, OSError, TimeoutError) as exc:
                metrics.HOTSET_PUBLISH_FAILURES.inc()
                log.warning("cannot publish the hot set at shutdown: %s", exc)


async def list_hotsets(ctx: ShardContext) -> list[dict[str, Any]]:
    """The hot sets in the bucket, newest first: ``{"node", "published", "bytes"}`` where
    ``published`` is the object's time and ``bytes`` its (compressed) size."""
    out = []
    async for info in ctx.store.list_all(HOTSET_ROOT):
        node = node_of(info.key)
        if node is not None:
            out.append({"node": node, "published": info.last_modified or 0.0,
                        "object_bytes": info.size})
    out.sort(key=lambda h: -float(h["published"]))
    return out


async def describe_hotsets(ctx: ShardContext) -> list[dict[str, Any]]:
    """:func:`list_hotsets`, each read for its time, entries and bytes (a damaged one is
    listed with its error)."""
    out = []
    for h in await list_hotsets(ctx):
        data = await ctx.store.get_bytes(hotset_key(str(h["node"])))
        if data is None:
            continue
        try:
            hs = await asyncio.to_thread(decode, data)
        except CacheDaemonError as exc:
            out.append({**h, "error": str(exc)})
            continue
        out.append({**h, "published": hs.published, "entries": len(hs.entries),
                    "bytes": hs.total_bytes})
    return out


async def read_hotset(ctx: ShardContext, source: str) -> HotSet:
    """The hot set ``source`` published (``any``: the newest, another node's if any).
    :class:`NotFound` if there is none."""
    node = source
    if source == "any":
        found = await list_hotsets(ctx)
        mine = str(ctx.settings.server.node_id)
        others = [h for h in found if h["node"] != mine]
        pick = (others or found)
        if not pick:
            raise NotFound(f"no hot set is published under {HOTSET_ROOT} in the bucket")
        node = str(pick[0]["node"])
    data = await ctx.store.get_bytes(hotset_key(node))
    if data is None:
        raise NotFound(f"node {node!r} has published no hot set ({hotset_key(node)})")
    return await asyncio.to_thread(decode, data)


@dataclass
class WarmStatus:
    state: str = "idle"  # idle | running | done | timed_out | failed | cancelled
    source: str | None = None  # the node whose hot set it is
    published: float | None = None
    started: float | None = None
    finished: float | None = None
    elapsed_s: float = 0.0
    budget_bytes: int = 0
    keys_total: int = 0
    bytes_total: int = 0
    keys_done: int = 0
    bytes_done: int = 0
    keys_skipped: int = 0  # cached already, being written, gone from the bucket
    keys_failed: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Warmer:
    """One warm-up at a time on shard 0 (see the module docstring)."""

    def __init__(self, ctx: ShardContext) -> None:
        self.ctx = ctx
        self._status = WarmStatus()
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._done.set()

    def status(self) -> dict[str, Any]:
        st = self._status
        if st.state == "running" and st.started is not None:
            st.elapsed_s = time.time() - st.started
        return st.as_dict()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait(self) -> dict[str, Any]:
        await self._done.wait()
        return self.status()

    def start(self, source: str, max_bytes: int | None = None,
              timeout_s: float | None = None) -> tuple[bool, dict[str, Any]]:
        """Start a warm-up from ``source`` (a node id or ``any``) unless one runs; returns
        whether this call started it, and the status."""
        if self.running:
            return False, self.status()
        s = self.ctx.settings.cache
        timeout = s.warm_timeout if timeout_s is None else timeout_s
        if timeout <= 0:
            raise InvalidArgument(f"a warm-up timeout must be positive, not {timeout}")
        if max_bytes is not None and max_bytes < 0:
            raise InvalidArgument(f"a warm-up byte budget cannot be negative: {max_bytes}")
        self._status = WarmStatus(state="running", source=None if source == "any" else source,
                                  started=time.time())
        self._done.clear()
        self._task = asyncio.ensure_future(self._run(source, max_bytes, timeout))
        self._task.add_done_callback(lambda _: self._done.set())
        metrics.WARMUPS.inc()
        return True, self.status()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, source: str, max_bytes: int | None, timeout: float) -> None:
        st = self._status
        started = time.monotonic()
        deadline = started + timeout
        try:
            async with asyncio.timeout(timeout):
                hotset = await read_hotset(self.ctx, source)
                st.source, st.published = hotset.node, hotset.published
                budget = await self._budget(max_bytes)
                todo = plan(hotset, budget, self.ctx.max_object_bytes)
                st.budget_bytes = budget
                st.keys_total = len(todo)
                st.bytes_total = sum(e.size for e in todo)
                log.info("warm-up from %s (published %s): %d objects, %d bytes, budget %d bytes",
                         hotset.node, time.strftime("%Y-%m-%d %H:%M:%S",
                                                    time.localtime(hotset.published)),
                         st.keys_total, st.bytes_total, budget)
                await self._fetch_all(todo, deadline)
            st.state = "done"
        except TimeoutError:
            st.state = "timed_out"
            st.error = f"stopped after {timeout:g}s (cache.warm_timeout)"
        except asyncio.CancelledError:
            st.state = "cancelled"
            raise
        except CacheDaemonError as exc:
            st.state = "failed"
            st.error = str(exc)
        except Exception as exc:  # logged: a warm-up never takes the daemon down
            st.state = "failed"
            st.error = f"{type(exc).__name__}: {exc}"
            log.error("warm-up failed: %s", exc, exc_info=exc)
        finally:
            st.finished = time.time()
            st.elapsed_s = time.monotonic() - started
            metrics.WARM_BYTES.inc(st.bytes_done)
            log.info("warm-up %s: %d of %d objects, %d bytes in %.1fs%s", st.state,
                     st.keys_done, st.keys_total, st.bytes_done, st.elapsed_s,
                     f" ({st.error})" if st.error else "")

    async def _budget(self, max_bytes: int | None) -> int:
        """What may be fetched: ``max_bytes`` (default ``cache.warm_bytes``, else the low
        watermark) and never more than the room below the low watermark now."""
        s = self.ctx.settings.cache
        stats = await self.ctx.cache.local().stats()
        low = int(stats.max_bytes * s.low_watermark)
        room = max(0, low - stats.bytes_used - stats.bytes_reserved)
        wanted = max_bytes if max_bytes is not None else (
            s.warm_bytes if s.warm_bytes is not None else low)
        return int(min(wanted, room))

    async def _fetch_all(self, todo: list[HotEntry], deadline: float) -> None:
        queue: asyncio.Queue[HotEntry] = asyncio.Queue()
        for entry in todo:
            queue.put_nowait(entry)
        full = asyncio.Event()

        async def worker() -> None:
            while not queue.empty() and not full.is_set():
                entry = queue.get_nowait()
                outcome, n = await self._fetch(entry, deadline)
                if outcome == objectops.Prefetched.FETCHED:
                    self._status.keys_done += 1
                    self._status.bytes_done += n
                elif outcome == objectops.Prefetched.NO_SPACE:
                    full.set()  # the cache has no room left without evicting: stop
                elif outcome == "failed":
                    self._status.keys_failed += 1
                else:
                    self._status.keys_skipped += 1

        n = max(1, self.ctx.settings.cache.warm_concurrency)
        await asyncio.gather(*(worker() for _ in range(n)))
        if full.is_set():
            self._status.error = "stopped: the cache has no more room below its low watermark"

    async def _fetch(self, entry: HotEntry, deadline: float) -> tuple[str, int]:
        # A reservation waits at most a moment: a warm-up takes free room, never makes it.
        wait = min(deadline, time.monotonic() + objectops.FILL_RESERVE_WAIT_S)
        try:
            if entry.is_sst:
                return await self._fetch_sst(entry, wait)
            return await objectops.prefetch(self.ctx, entry.key, deadline=wait,
                                            owner=f"warm-up {entry.key}")
        except CacheFull:
            return objectops.Prefetched.NO_SPACE, 0
        except CacheDaemonError as exc:
            log.debug("warm-up: %s: %s", entry.key, exc)
            return "failed", 0

    async def _fetch_sst(self, entry: HotEntry, wait: float) -> tuple[str, int]:
        """A cached SST: immutable, so no per-key order; reserved, downloaded and put under
        its cache key as the metastore's reader does."""
        cache = self.ctx.cache.local()
        if cache.peek(entry.key) is not None:
            return objectops.Prefetched.CACHED, 0
        result = await self.ctx.store.get(entry.object_key)
        if result is None:
            return objectops.Prefetched.SKIPPED, 0
        async with result:
            size = result.content_length
            guard = await cache.reserve_space(size, 1, wait, klass="prefetch",
                                              owner=f"warm-up {entry.key}")
            try:
                await cache.put(entry.key, result.iter_chunks(), guard, wait, klass="prefetch",
                                owner=f"warm-up {entry.key}")
            finally:
                guard.close()
        metrics.DOWNLOAD_BYTES.inc(size)
        return objectops.Prefetched.FETCHED, size
