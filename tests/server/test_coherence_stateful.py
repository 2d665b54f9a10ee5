"""The per-key ordering rule, checked directly: a hypothesis state machine interleaves object
PUTs, DELETEs, cache-filling GETs, HEADs and cache drops step by step.

The real object routes serve on an in-process shard server (one shard, the real cache, the real
``file://`` bucket), and requests go over HTTP. The bucket is wrapped in :class:`HeldStore`,
which parks every ``put``/``delete``/``get`` at its dangerous steps — before the bucket call,
after it (the result not yet returned), and for a GET once its body is exhausted (just before
the fill would commit) — until the machine releases it. So each rule either starts an operation
(which runs until its first parking place or its answer) or moves one parked operation on to
its next. The wrapper records the order in which the bucket applied writes; that history is
the truth the checks use:

* **reads follow writes**: a GET or HEAD returns the state the bucket held at some point no
  earlier than the newest write that had answered before the read started, and no later than
  the bucket's state when the read answered;
* **the cache agrees with the bucket**: whenever no PUT or DELETE of a key is in flight, its
  cache entry is absent or holds exactly the bucket's bytes;
* **a cache drop sticks**: after ``DELETE /v1/cache/objects/{key}`` answers, operations that
  began before the drop never put a copy back;
* at the end, the shard-0 key table holds nothing (bounded memory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import cachedaemon.server.handlers  # noqa: F401  (registers the routes)
from cachedaemon.cache.keys import key_relpath
from cachedaemon.cache.service import start_cache
from cachedaemon.config import load_settings
from cachedaemon.core.smp import Smp
from cachedaemon.remote.base import GetResult, ObjectInfo
from cachedaemon.remote.local import LocalObjectStore
from cachedaemon.server.app import start_shard_server
from cachedaemon.server.context import ServerState, ShardContext

KEYS = ["k0", "d/k1"]
#: Mostly one key, so operations on it interleave; sometimes a second, nested one.
KEY = st.sampled_from(["k0", "k0", "k0", "d/k1"])
SETTLE_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 4


class Park:
    """One bucket call held at one of its steps until released."""

    def __init__(self, kind: str, key: str, step: str) -> None:
        self.kind = kind
        self.key = key
        self.step = step
        self.released = asyncio.Event()

    def __repr__(self) -> str:
        return f"{self.kind}({self.key}).{self.step}"


class HeldStore:
    """The real bucket, with every put/delete/get parked at its steps (see the module
    docstring); heads and listings pass through. Records the bucket's write history."""

    def __init__(self, inner: LocalObjectStore) -> None:
        self.inner = inner
        self.parked: list[Park] = []
        self.arrivals = 0
        self.free = False  # tearing down: nothing parks any more
        #: (seq, key, label or None) in the order the bucket applied the writes.
        self.history: list[tuple[int, str, str | None]] = []

    def release_all(self) -> None:
        self.free = True
        for park in self.parked:
            park.released.set()

    async def _park(self, kind: str, key: str, step: str) -> None:
        if self.free:
            return
        park = Park(kind, key, step)
        self.parked.append(park)
        self.arrivals += 1
        try:
            await park.released.wait()
        finally:
            if park in self.parked:
                self.parked.remove(park)

    def seq(self) -> int:
        return len(self.history)

    async def put(self, key: str, body: Any, **kw: Any) -> ObjectInfo:
        await self._park("put", key, "before")
        data = body if isinstance(body, bytes | bytearray | memoryview) else body.read_bytes()
        info = await self.inner.put(key, bytes(data), **kw)
        self.history.append((self.seq() + 1, key, label_of(bytes(data))))
        await self._park("put", key, "after")
        return info

    async def delete(self, key: str) -> None:
        await self._park("delete", key, "before")
        await self.inner.delete(key)
        self.history.append((self.seq() + 1, key, None))
        await self._park("delete", key, "after")

    async def get(self, key: str, **kw: Any) -> GetResult | None:
        await self._park("get", key, "before")
        result = await self.inner.get(key, **kw)
        await self._park("get", key, "after")
        if result is None:
            return None
        inner = result

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in inner.iter_chunks():
                yield chunk
            await self._park("get", key, "eof")

        return GetResult(inner.info, inner.content_length, inner.range, chunks(), inner.close)

    async def head(self, key: str) -> ObjectInfo | None:
        return await self.inner.head(key)

    async def list(self, *args: Any, **kw: Any) -> Any:
        return await self.inner.list(*args, **kw)

    async def close(self) -> None:
        await self.inner.close()


def label_of(body: bytes) -> str:
    return body.split(b";", 1)[0].decode()


def body_of(label: str, n: int) -> bytes:
    return (f"{label};".encode() * (n // (len(label) + 1) + 1))[:max(n, len(label) + 1)]


@dataclasses.dataclass
class Op:
    name: str
    kind: str  # put | delete | get | head | drop
    key: str
    label: str | None
    started: int  # event index
    task: asyncio.Task[tuple[int, bytes, str | None]]
    park: Park | None = None
    bucket_seq_at_start: int = 0
    answered: int | None = None
    applied: int = 0  # writes: the bucket seq at which the write was applied


def checked(fn: Any) -> Any:
    """Remember that a step failed, so the teardown only cleans up (the failure stands)."""
    @functools.wraps(fn)
    def wrapper(self: CoherenceMachine, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self, *args, **kw)
        except BaseException:
            self.failed = True
            raise
    return wrapper


class CoherenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="coherence-stateful-"))
        self.ops: list[Op] = []
        self.done: list[Op] = []
        self.events = 0
        self.versions = 0
        self.failed = False
        #: Per key: a cache drop answered and every PUT/GET of the key still in flight began
        #: before the drop did, so none of them may put a copy back.
        self.drop_barrier: dict[str, bool] = {k: False for k in KEYS}
        self.run(self._start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        s = load_settings(env={}, flags={"storage.data_dir": str(self.dir / "data")})
        s = dataclasses.replace(s, cache=dataclasses.replace(
            s.cache, max_bytes=64 * 1024 * 1024, reserve_deadline=5.0))
        self.smp = Smp.single()
        self.bucket = LocalObjectStore(self.dir / "bucket")
        self.store = HeldStore(self.bucket)
        self.cache = await start_cache(self.smp, s.cache, s.cache_dir, fsync_commits=False)
        self.cache_root = s.cache_dir
        state = ServerState(1, self.smp)
        ctx = ShardContext(shard=0, settings=s, state=state, store=self.store, cache=self.cache,
                           max_object_bytes=16 * 1024 * 1024)
        ctx.idle.set()
        state.ready = True
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.runner = await start_shard_server(ctx, sock, 1024)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=60))

    # --- operations ---------------------------------------------------------------------------

    async def _request(self, method: str, path: str, data: bytes | None
                       ) -> tuple[int, bytes, str | None]:
        async with self.session.request(method, self.url + path, data=data) as r:
            return r.status, await r.read(), r.headers.get("X-Cache")

    def _begin(self, kind: str, key: str, method: str, path: str, data: bytes | None = None,
               label: str | None = None) -> None:
        self.events += 1
        name = f"{kind}#{self.events}"
        if kind in ("put", "get"):
            self.drop_barrier[key] = False
        task = self.loop.create_task(self._request(method, path, data))
        op = Op(name, kind, key, label, self.events, task, bucket_seq_at_start=self.store.seq())
        self.ops.append(op)
        self.last = op
        arrivals = self.store.arrivals
        self.run(self._settle())
        self._attribute(op, arrivals)

    def _attribute(self, op: Op, arrivals: int) -> None:
        """A park that arrived while only ``op`` could run is ``op``'s. One that arrives after
        ``op`` answered (a stream-through GET's end of body, once the client has every byte)
        has nothing left to order: it is let go."""
        while True:
            assigned = {o.park for o in self.ops if o.park is not None}
            new = [p for p in self.store.parked if p not in assigned and not p.released.is_set()]
            if not new:
                return
            if op.task.done():
                for park in new:
                    park.released.set()
                self.run(self._settle())
                continue
            assert len(new) == 1, (op, new)
            op.park = new[0]
            return

    async def _settle(self) -> None:
        """Run until every operation is parked or has answered. Each running operation parks
        at most once before it is released again, so "as many fresh parks as running
        operations" means all of them are parked."""
        deadline = self.loop.time() + SETTLE_TIMEOUT_S
        while True:
            await asyncio.sleep(0.001)
            assigned = {o.park for o in self.ops if o.park is not None}
            fresh = [p for p in self.store.parked
                     if p not in assigned and not p.released.is_set()]
            running = [o for o in self.ops if not o.task.done() and o.park is None]
            if len(running) <= len(fresh):
                break
            assert self.loop.time() < deadline, f"stuck: {self.ops} parked {self.store.parked}"
        self._collect()

    def _collect(self) -> None:
        for op in [o for o in self.ops if o.task.done()]:
            self.ops.remove(op)
            if op.park is not None:  # answered while parked (end of a streamed body)
                op.park.released.set()
                op.park = None
            self.events += 1
            op.answered = self.events
            status, body, xcache = op.task.result()
            self._check_answer(op, status, body, xcache)
            self.done.append(op)
            if op.kind == "drop":
                self.drop_barrier[op.key] = all(
                    o.started < op.started for o in self.ops
                    if o.key == op.key and o.kind in ("put", "get"))

    # --- checks -------------------------------------------------------------------------------

    def _allowed(self, key: str, floor: int) -> list[str | None]:
        """What a read of ``key`` may return: the bucket's state just after write ``floor``
        (seq 0: the start), or any state a later write of the key left, up to now."""
        writes = [(seq, label) for seq, k, label in self.store.history if k == key]
        at_floor = [label for seq, label in writes if seq <= floor]
        return [at_floor[-1] if at_floor else None] + [label for seq, label in writes
                                                       if seq > floor]

    def _floor(self, op: Op) -> int:
        """The bucket seq of the newest write of op's key that answered before op began."""
        return max((w.applied for w in self.done
                    if w.key == op.key and w.applied and (w.answered or 0) < op.started),
                   default=0)

    def _check_answer(self, op: Op, status: int, body: bytes, xcache: str | None) -> None:
        if op.kind == "put":
            assert status == 201, (op, status, body)
            op.applied = self._applied_seq(op)
        elif op.kind == "delete":
            assert status == 204, (op, status, body)
            op.applied = self._applied_seq(op)
        elif op.kind == "drop":
            assert status == 204, (op, status, body)
        else:
            assert status in (200, 404), (op, status, body)
            got = None if status == 404 else (
                label_of(body) if op.kind == "get" else "present")
            allowed = self._allowed(op.key, self._floor(op))
            if op.kind == "head":
                allowed = [None if s is None else "present" for s in allowed]
            assert got in allowed, (
                f"{op.name} ({xcache}) of {op.key} returned {got}; after the writes that had "
                f"answered before it began, the bucket held only {allowed}")

    def _applied_seq(self, op: Op) -> int:
        """The bucket seq of a write: the one applied for this op (matched by label / kind
        among writes of its key since it began)."""
        for seq, k, label in self.store.history:
            if k == op.key and seq > op.bucket_seq_at_start and (
                    (op.kind == "put" and label == op.label)
                    or (op.kind == "delete" and label is None)):
                return seq
        raise AssertionError(f"{op} answered but the bucket never applied it")

    def _cache_bytes(self, key: str) -> bytes | None:
        path = self.cache_root / key_relpath(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _bucket_bytes(self, key: str) -> bytes | None:
        path = self.bucket.root + "/" + key
        try:
            return Path(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    @invariant()
    @checked
    def cache_agrees_with_bucket(self) -> None:
        for key in KEYS:
            writing = [o for o in self.ops if o.key == key and o.kind in ("put", "delete")]
            cached = self._cache_bytes(key)
            if not writing and cached is not None:
                assert cached == self._bucket_bytes(key), (
                    f"no write of {key} in flight, yet the cache holds "
                    f"{label_of(cached)} and the bucket "
                    f"{label_of(self._bucket_bytes(key) or b'(nothing);')}")

    @invariant()
    @checked
    def cache_drop_sticks(self) -> None:
        for key in KEYS:
            if self.drop_barrier[key]:
                assert self._cache_bytes(key) is None, (
                    f"{key} cached again by an operation that began before the cache drop")

    # --- rules --------------------------------------------------------------------------------

    def parked(self) -> list[Op]:
        return [o for o in self.ops if o.park is not None]

    def _in_flight(self, key: str, kind: str | None = None) -> list[Op]:
        return [o for o in self.ops if o.key == key and (kind is None or o.kind == kind)]

    # One rule starts any operation and one moves a parked one on, so hypothesis picks
    # between starting and advancing evenly (a rule per kind would mostly start).

    @precondition(lambda self: len(self.ops) < MAX_IN_FLIGHT)
    @rule(kind=st.sampled_from(["put", "put", "delete", "get", "get", "head", "drop"]),
          key=KEY, size=st.sampled_from([5, 70000]))
    @checked
    def start(self, kind: str, key: str, size: int) -> None:
        path = f"/v1/objects/{key}"
        if kind == "put":
            self.versions += 1
            label = f"v{self.versions}"
            self._begin("put", key, "PUT", path, body_of(label, size), label)
        elif kind == "delete":
            self._begin("delete", key, "DELETE", path)
        elif kind == "get":
            if not self._in_flight(key, "get"):  # a second would wait for the first's fill
                self._begin("get", key, "GET", path)
        elif kind == "head":
            self._begin("head", key, "HEAD", path)
        else:
            self._begin("drop", key, "DELETE", f"/v1/cache/objects/{key}")

    @precondition(lambda self: any(o.park is not None for o in self.ops))
    @rule(pick=st.integers(min_value=0, max_value=100))
    @checked
    def advance(self, pick: int) -> None:
        parked = self.parked()
        op = parked[pick % len(parked)]
        park = op.park
        assert park is not None
        arrivals = self.store.arrivals
        park.released.set()
        op.park = None
        self.run(self._settle())
        self._attribute(op, arrivals)

    def teardown(self) -> None:
        try:
            if not self.failed:
                self.store.release_all()  # everything runs to its answer
                for o in self.ops:
                    o.park = None
                self.run(self._settle())
                assert not self.ops
                self.cache_agrees_with_bucket()
                table = self.cache.local().key_table_size()
                assert table == 0, f"{table} keys left in the shard-0 table"
        finally:
            self.store.release_all()
            self.run(self._stop())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _stop(self) -> None:
        tasks = [o.task for o in self.ops]
        if tasks:
            await asyncio.wait(tasks, timeout=SETTLE_TIMEOUT_S)
        await self.session.close()
        self.runner.abort_all()
        await self.cache.stop()
        await self.store.close()
        await self.smp.stop()


def machine_settings(examples: int) -> settings:
    return settings(
        max_examples=examples, stateful_step_count=30, deadline=None,
        # (no "explain" phase: it re-parses source and trips over CPython 3.11's AST
        # recursion check on this machine's deep async stacks)
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_coherence_state_machine() -> None:
    run_state_machine_as_test(CoherenceMachine, settings=machine_settings(25))


@pytest.mark.slow
def test_coherence_state_machine_long() -> None:
    run_state_machine_as_test(CoherenceMachine, settings=machine_settings(500))


# --- the known dangerous interleavings, scheduled explicitly -----------------------------------
#
# Each scenario is a list of steps: ("start", kind, key) starts an operation (named by its kind
# and a running number: put1, put2, get1, ...); ("step", name) moves it to its next parking
# place; ("finish", name) runs it to its answer. The machine's checks run after every step.

SCHEDULES: dict[str, list[tuple[str, ...]]] = {
    # Two uploads land in one order, their commits in the other.
    "put_put": [("start", "put", "k0"), ("start", "put", "k0"), ("step", "put1"),
                ("step", "put2"), ("finish", "put2"), ("finish", "put1")],
    # A DELETE runs between a PUT's upload and its commit.
    "put_delete": [("start", "put", "k0"), ("step", "put1"), ("start", "delete", "k0"),
                   ("finish", "delete1"), ("finish", "put1")],
    # A fill downloads the object, a DELETE removes it, then the fill would commit.
    "fill_delete": [("start", "put", "k0"), ("finish", "put1"), ("start", "drop", "k0"),
                    ("start", "get", "k0"), ("step", "get1"), ("step", "get1"),
                    ("start", "delete", "k0"), ("finish", "delete1"), ("finish", "get1")],
    # The fill registers while the DELETE is in flight but has not reached the bucket.
    "fill_during_delete": [("start", "put", "k0"), ("finish", "put1"), ("start", "drop", "k0"),
                           ("start", "delete", "k0"), ("start", "get", "k0"), ("step", "get1"),
                           ("step", "get1"), ("finish", "delete1"), ("finish", "get1")],
    # A fill of the old version finishes after a PUT of a new one (and a drop in between).
    "fill_put": [("start", "put", "k0"), ("finish", "put1"), ("start", "drop", "k0"),
                 ("start", "get", "k0"), ("step", "get1"), ("step", "get1"),
                 ("start", "put", "k0"), ("finish", "put2"), ("start", "drop", "k0"),
                 ("finish", "get1")],
    # A PUT uploaded before a cache drop commits after it.
    "drop_put": [("start", "put", "k0"), ("step", "put1"), ("start", "drop", "k0"),
                 ("finish", "put1")],
    # A fill that began before a cache drop commits after it.
    "drop_fill": [("start", "put", "k0"), ("finish", "put1"), ("start", "drop", "k0"),
                  ("start", "get", "k0"), ("step", "get1"), ("step", "get1"),
                  ("start", "drop", "k0"), ("finish", "get1")],
    # Reads after a PUT answered, while another PUT of the key is still in flight.
    "read_after_put": [("start", "put", "k0"), ("start", "put", "k0"), ("step", "put2"),
                       ("finish", "put1"), ("start", "get", "k0"), ("finish", "get1"),
                       ("start", "head", "k0"), ("finish", "head1"), ("finish", "put2"),
                       ("start", "get", "k0"), ("finish", "get2")],
}


def run_schedule(steps: list[tuple[str, ...]]) -> None:
    machine = CoherenceMachine()
    counts: dict[str, int] = {}
    names: dict[str, Op] = {}
    try:
        for step in steps:
            if step[0] == "start":
                kind, key = step[1], step[2]
                counts[kind] = counts.get(kind, 0) + 1
                machine.start(kind, key, 3000)
                names[f"{kind}{counts[kind]}"] = machine.last
            else:
                op = names[step[1]]
                while op in machine.ops and op.park is not None:
                    machine.advance(machine.parked().index(op))
                    if step[0] == "step":
                        break
                if step[0] == "finish":
                    assert op not in machine.ops, f"{step[1]} did not answer"
            machine.cache_agrees_with_bucket()
            machine.cache_drop_sticks()
    finally:
        machine.teardown()


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_dangerous_interleavings(name: str) -> None:
    run_schedule(SCHEDULES[name])
