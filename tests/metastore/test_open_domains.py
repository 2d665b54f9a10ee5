"""Bounded open domains (issue 13): the cap closes the least recently used idle domain, the idle
closer flushes and closes unused ones, a domain in use is never closed, and everything closed
reopens lazily with its data. End to end: 300 domains under ``ulimit -n 256`` all work and
object PUTs keep working."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.cache.service import CacheService
from cachedaemon.clock import ManualClock
from cachedaemon.metastore.domain import DomainConfig
from cachedaemon.metastore.service import DomainService
from cachedaemon.remote.base import ObjectStore
from tests.support.daemon import start_daemon
from tests.support.http import fetch

LSM = {"block_size": 1024, "max_file_bytes": 64 * 1024}
Maker = Callable[..., Awaitable[DomainService]]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Maker]:
    made: list[tuple[DomainService, CacheService]] = []

    async def make(store: ObjectStore, **overrides: Any) -> DomainService:
        cache = await CacheService.open_single(tmp_path / "cache")
        options: dict[str, Any] = {
            "data_dir": tmp_path, "memtable_bytes": 64 * 1024, "flush_interval_s": 3600.0,
            "gc_interval_s": 3600.0, "file_deletion_delay_s": 0.0, "lsm": LSM,
        }
        options.update(overrides)
        service = DomainService(0, 1, store, cache, DomainConfig(**options))
        await service.start()
        made.append((service, cache))
        return service

    yield make
    for service, cache in reversed(made):
        await service.stop()
        await cache.stop()


async def test_the_cap_closes_the_least_recently_used_domain(make_service: Maker,
                                                             make_object_store: Any) -> None:
    store = await make_object_store("local")
    svc = await make_service(store, max_open_domains=3, idle_timeout_s=0)
    for name in ("a", "b", "c"):
        await svc.put(name, b"k", name.encode())
    await svc.get("a", b"k")  # a is now more recent than b
    await svc.put("d", b"k", b"d")
    assert sorted(d.name for d in svc.domains()) == ["a", "c", "d"]  # b went
    assert svc.closed_idle == 1
    for name in ("a", "b", "c", "d"):  # b reopens lazily with its data; another one closes
        assert await svc.get(name, b"k") == name.encode()
    assert len(list(svc.domains())) <= 3


async def test_a_domain_in_use_is_never_closed(make_service: Maker,
                                               make_object_store: Any) -> None:
    store = await make_object_store("local")
    svc = await make_service(store, max_open_domains=1, idle_timeout_s=0)
    await svc.put("busy", b"k", b"v")
    async with svc.use("busy", create=False) as busy:
        await svc.put("other", b"k", b"v")  # no idle domain to close: over the cap for now
        assert {d.name for d in svc.domains()} == {"busy", "other"}
        assert await busy.get(b"k") == b"v"  # still open and readable
    await svc.put("third", b"k", b"v")
    assert len(list(svc.domains())) == 1


async def test_idle_domains_are_flushed_closed_and_reopened(make_service: Maker,
                                                            make_object_store: Any) -> None:
    store = await make_object_store("local")
    clock = ManualClock()
    svc = await make_service(store, clock=clock, idle_timeout_s=60.0)
    await svc.put("idle", b"k", b"v1")
    await svc.put("busy", b"k", b"v2")
    for _ in range(5):
        clock.advance(20)
        await svc.get("busy", b"k")  # keeps busy in use
        for _ in range(20):
            await asyncio.sleep(0)
    for _ in range(200):
        if "idle" not in {d.name for d in svc.domains()}:
            break
        await asyncio.sleep(0.01)
    assert {d.name for d in svc.domains()} == {"busy"}
    # Its metric series went with it (the collector reads the open domains).
    from cachedaemon.metastore.metrics import DomainCollector

    labels = {tuple(sample.labels.values()) for family in DomainCollector().collect()
              for sample in family.samples}
    assert ("busy",) in labels and ("idle",) not in labels
    # Closed after a flush: its write is in the bucket's manifest, not only in the log.
    info = await svc.info("idle")
    assert info["persisted_seqno"] == info["last_seqno"] == 1
    assert await svc.get("idle", b"k") == b"v1"


def test_many_domains_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with start_daemon(tmp_path / "d", preexec_fn=low) as d:
        async def scenario() -> None:
            for i in range(0, 300, 20):  # 300 domains, 20 at a time
                results = await asyncio.gather(*(
                    fetch("PUT", f"{d.url}/v1/kv/dom{j:03d}/k", data=b"v%d" % j)
                    for j in range(i, i + 20)))
                assert [r.status for r in results] == [204] * 20
            assert (await fetch("PUT", f"{d.url}/v1/objects/after", data=b"x" * 10_000)
                    ).status == 201
            for j in (0, 150, 299):
                r = await fetch("GET", f"{d.url}/v1/kv/dom{j:03d}/k")
                assert r.status == 200 and r.body == b"v%d" % j
        asyncio.run(scenario())
        logs = d.logs()
    assert "EMFILE" not in logs and "Too many open files" not in logs
    assert "metastore.max_open_domains" in logs  # the budget lowered the figures, and said so
