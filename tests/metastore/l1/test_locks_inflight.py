"""The L1 lock tables under concurrency, with a tiny key space and cancellations.

The in-flight rule (``docs/concurrency.md``): a per-key lock created on demand is shared by
everyone who asks for that key while anyone holds or waits for it, so the waiter's claim (the
user count) is taken in the same step as the lookup, before it waits; the entry goes only when
the last user leaves, cancelled or not. These stress loops check mutual exclusion per key (and
readers against writers per topic) while tasks come, wait, get cancelled and leave, and that
the tables are empty afterwards.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import pytest

from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.locks import LockManager

TOPICS = [uuid.UUID(int=i) for i in (1, 2)]
PARTS = [TopicIdPartition(t, p) for t in TOPICS for p in (0, 1)]
OIDS = [uuid.UUID(int=100 + i) for i in range(3)]


@pytest.mark.parametrize("seed", range(4))
async def test_keyed_locks_exclude_and_drain_under_cancellation(seed: int) -> None:
    rnd = random.Random(seed)
    locks = LockManager()
    inside: Counter[object] = Counter()
    readers: Counter[uuid.UUID] = Counter()
    writers: Counter[uuid.UUID] = Counter()
    done = Counter[str]()

    async def op(i: int) -> None:
        parts = rnd.sample(PARTS, rnd.randint(0, 2))
        excl = [t for t in TOPICS if rnd.random() < 0.15]
        oids = rnd.sample(OIDS, rnd.randint(0, 2))
        async with locks.partitions(parts, exclusive_topics=excl):
            shared = {p.topic_id for p in parts} - set(excl)
            for t in excl:
                assert writers[t] == 0 and readers[t] == 0
                writers[t] += 1
            for t in shared:
                assert writers[t] == 0
                readers[t] += 1
            for p in parts:
                assert inside[p] == 0
                inside[p] += 1
            try:
                async with locks.objects(oids):
                    for o in oids:
                        assert inside[o] == 0
                        inside[o] += 1
                    for _ in range(rnd.randint(0, 3)):
                        await asyncio.sleep(0)
                    for o in oids:
                        inside[o] -= 1
            finally:
                for p in parts:
                    inside[p] -= 1
                for t in shared:
                    readers[t] -= 1
                for t in excl:
                    writers[t] -= 1
        done["ok"] += 1

    tasks = [asyncio.create_task(op(i)) for i in range(300)]
    for _ in range(40):
        await asyncio.sleep(0)
        victim = rnd.choice(tasks)
        victim.cancel()  # waiting or holding: either way its claims must go
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)
                and not isinstance(r, asyncio.CancelledError)]
    assert not failures, failures[:3]
    assert done["ok"] >= 200
    assert locks.statistics() == {"topics": 0, "partitions": 0, "objects": 0}
    assert locks.domain.idle
    async with locks.partitions(PARTS, exclusive_domain=True):  # nothing left held
        pass
