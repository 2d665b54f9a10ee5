"""The pure parts of issue 18: the eviction log, the hot set format and choices, the
reservation classes' queue."""

from __future__ import annotations

import pytest

from cachedaemon.cache.classes import ReservationClass, WaiterQueue
from cachedaemon.cache.evictions import EvictionLog, EvictionReason
from cachedaemon.cache.hotset import (
    MAGIC,
    HotEntry,
    HotSet,
    decode,
    encode,
    entries_from_lru,
    hotset_key,
    node_of,
    plan,
    validate_node_id,
)
from cachedaemon.cache.keys import key_relpath
from cachedaemon.errors import Corruption

# --- eviction log -----------------------------------------------------------------------------


def test_eviction_log_keeps_the_latest_record_of_the_newest_paths() -> None:
    log = EvictionLog(capacity=3)
    log.record("a", EvictionReason.lru_trim, 10, 1.0)
    log.record("b", EvictionReason.deleted, 20, 2.0)
    log.record("a", EvictionReason.manual_drop, 11, 3.0)  # a again: latest wins, moves up
    log.record("c", EvictionReason.replaced, 30, 4.0)
    log.record("d", EvictionReason.exhaustive_trim, 40, 5.0)  # b (oldest) goes
    assert log.lookup("b") is None
    a = log.lookup("a")
    assert a is not None and (a.reason, a.size, a.at) == (EvictionReason.manual_drop, 11, 3.0)
    assert len(log) == 3 and log.oldest() == 3.0
    assert log.counts[EvictionReason.lru_trim] == 1
    assert sum(log.counts.values()) == 5
    assert all(r.description for r in EvictionReason)


def test_eviction_log_of_capacity_zero_only_counts() -> None:
    log = EvictionLog(capacity=0)
    log.record("a", EvictionReason.walk_trim, 1, 1.0)
    assert log.lookup("a") is None and log.counts[EvictionReason.walk_trim] == 1
    with pytest.raises(ValueError):
        EvictionLog(capacity=-1)


# --- hot sets ---------------------------------------------------------------------------------


def test_hot_set_round_trip_and_corruption() -> None:
    hs = HotSet("node-a", 1234.5, 1 << 30,
                tuple(HotEntry(f"k/{i}", i * 100, i) for i in range(1000)))
    data = encode(hs)
    assert data.startswith(MAGIC)
    assert len(data) < 1000 * 10  # compressed
    assert decode(data) == hs
    for bad in (data[:10], b"X" * 8 + data[8:], data[:-1], data[:-1] + bytes([data[-1] ^ 1]),
                data[:8] + b"\x02" + data[9:]):
        with pytest.raises(Corruption):
            decode(bad)


def test_hot_set_entries_from_the_lru_order() -> None:
    items = [(key_relpath("a/b"), 5), (key_relpath(".cachedaemon/lsm/x/1.sst"), 7),
             (key_relpath(".cachedaemon/s3/uploads/u/1"), 9), (key_relpath("c"), 1),
             ("x%d/" + "y" * 100 + "%h" + "0" * 40, 3)]  # a shortened name: no key
    entries = entries_from_lru(items, limit=10)
    assert [(e.key, e.size, e.rank) for e in entries] == [
        ("a/b", 5, 0), (".cachedaemon/lsm/x/1.sst", 7, 1), ("c", 1, 2)]
    assert entries[1].is_sst and entries[1].object_key == "x/1.sst"
    assert entries[0].object_key == "a/b" and not entries[0].is_sst
    assert len(entries_from_lru(items, limit=1)) == 1


def test_hot_set_plan_takes_the_most_recent_that_fit() -> None:
    hs = HotSet("n", 0.0, 100, (HotEntry("c", 30, 2), HotEntry("a", 50, 0),
                                HotEntry("big", 500, 1), HotEntry("d", 30, 3),
                                HotEntry("e", 10, 4)))
    assert [e.key for e in plan(hs, 100, 1000)] == ["a", "c", "e"]
    assert [e.key for e in plan(hs, 10_000, 100)] == ["a", "c", "d", "e"]
    assert plan(hs, 0, 1000) == []


def test_node_ids() -> None:
    assert validate_node_id("node-1.example_2") is None
    for bad in ("", "-x", "a/b", "a" * 64, "é"):
        assert validate_node_id(bad) is not None
    assert hotset_key("n1") == ".cachedaemon/hotset/n1"
    assert node_of(".cachedaemon/hotset/n1") == "n1"
    assert node_of(".cachedaemon/hotset/a/b") is None
    assert node_of("hotset/n1") is None


# --- reservation classes ----------------------------------------------------------------------


class W:
    def __init__(self, klass: ReservationClass, name: str) -> None:
        self.klass = klass
        self.name = name


def test_waiters_are_granted_by_class_then_fifo() -> None:
    q: WaiterQueue[W] = WaiterQueue()
    order = [(ReservationClass.prefetch, "p1"), (ReservationClass.write, "w1"),
             (ReservationClass.read, "r1"), (ReservationClass.metastore, "m1"),
             (ReservationClass.read, "r2"), (ReservationClass.write, "w2")]
    ws = {name: W(k, name) for k, name in order}
    for _, name in order:
        q.append(ws[name])
    assert [w.name for w in q] == ["r1", "r2", "w1", "w2", "m1", "p1"]
    assert q.counts() == {"read": 2, "write": 2, "metastore": 1, "prefetch": 1}
    assert q.blocks(ReservationClass.prefetch) and q.blocks(ReservationClass.read)
    q.remove(ws["r1"])
    q.remove(ws["r2"])
    assert not q.blocks(ReservationClass.read) and q.blocks(ReservationClass.write)
    head = q.head()
    assert head is not None and head.name == "w1"
    assert q.popleft().name == "w1" and len(q) == 3
    with pytest.raises(ValueError):
        q.remove(ws["r1"])
    assert ReservationClass.parse("metastore") is ReservationClass.metastore
    with pytest.raises(ValueError, match="read, write, metastore, prefetch"):
        ReservationClass.parse("urgent")
