"""SST builder + reader round trips and corruption detection, over memory persistence."""

from __future__ import annotations

import random

import pytest

from cachedaemon.errors import Corruption
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.dbformat import (
    KIND_DELETE,
    KIND_VALUE,
    make_internal_key,
    seek_key,
    user_prefix,
)
from cachedaemon.lsm.format import FOOTER_LEN, decode_footer
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.lsm.io.persistence import DataPersistence, FileHandle
from cachedaemon.lsm.table import SstReader
from cachedaemon.lsm.table_builder import SstBuilder
from cachedaemon.lsm.table_cache import TableCache

H = FileHandle(7, 3)


def entries(n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = KIND_DELETE if i % 7 == 0 else KIND_VALUE
        value = b"" if kind == KIND_DELETE else bytes(rnd.randrange(256) for _ in range(20)) * 3
        out.append((make_internal_key(b"user\x00%06d" % i, 1000 + i, kind), value))
    return sorted(out)


async def build(
    data: DataPersistence, items: list[tuple[bytes, bytes]], compression: str = "none", **kw: int
) -> int:
    builder = SstBuilder(H, await data.open_sequential_writer(H), compression=compression, **kw)  # type: ignore[arg-type]
    for k, v in items:
        builder.add(k, v)
        if builder.should_drain:
            await builder.drain()
    return await builder.finish()


async def open_reader(data: DataPersistence, cache_bytes: int = 1 << 20) -> SstReader:
    reader = await data.open_random_access_reader(H)
    assert reader is not None
    return await SstReader.open(H, reader, BlockCache(cache_bytes))


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])
async def test_round_trip(compression: str) -> None:
    p = memory_persistence()
    items = entries(2000)
    size = await build(p.data, items, compression, block_size=1024)
    table = await open_reader(p.data)
    assert table.size == size and len(table) > 10
    it = table.iterator()
    await it.seek_to_first()
    got = []
    while it.valid():
        got.append((it.key(), it.value()))
        await it.next()
    assert got == items
    back = []
    await it.seek_to_last()
    while it.valid():
        back.append((it.key(), it.value()))
        await it.prev()
    assert back == items[::-1]
    for i in range(0, 2000, 37):
        uk = b"user\x00%06d" % i
        found = await table.get(seek_key(uk), user_prefix(uk))
        assert found is not None
        assert found == next(e for e in items if e[0].startswith(user_prefix(uk)))
        assert await table.get(seek_key(uk, 999), user_prefix(uk)) is None  # too old a snapshot
        await it.seek(seek_key(uk))
        assert it.key() == found[0]
    assert await table.get(seek_key(b"absent"), user_prefix(b"absent")) is None
    await table.close()


async def test_compression_shrinks_compressible_data() -> None:
    sizes = {}
    for c in ("none", "zstd", "lz4"):
        p = memory_persistence()
        sizes[c] = await build(p.data, entries(1000), c)
    assert sizes["zstd"] < sizes["none"] * 0.8
    assert sizes["lz4"] < sizes["none"] * 0.9


async def test_bloom_filter_avoids_block_reads() -> None:
    p = memory_persistence()
    await build(p.data, entries(2000), block_size=512)
    table = await open_reader(p.data)
    for i in range(500):
        uk = b"missing-%d" % i
        await table.get(seek_key(uk), user_prefix(uk))
    assert table.block_reads < 25  # ~1 % false positives


def flip(files: dict[FileHandle, bytes], offset: int) -> None:
    raw = bytearray(files[H])
    raw[offset] ^= 0x40
    files[H] = bytes(raw)


async def test_corrupt_data_block_names_file_and_offset() -> None:
    p = memory_persistence()
    await build(p.data, entries(500), block_size=512)
    table = await open_reader(p.data)
    off, _ = table.handles[3]
    first_key = table.index_keys[3]
    await table.close()
    flip(p.data.files, off + 10)  # type: ignore[attr-defined]
    table = await open_reader(p.data)
    it = table.iterator()
    with pytest.raises(Corruption, match=rf"{H.name} at offset {off}: block checksum"):
        await it.seek(first_key)
    # Blocks before it still read fine.
    await it.seek_to_first()
    assert it.valid()
    await table.close()


@pytest.mark.parametrize("where", ["footer", "magic", "index"])
async def test_corrupt_metadata_fails_open(where: str) -> None:
    p = memory_persistence()
    size = await build(p.data, entries(300), block_size=512)
    raw = p.data.files[H]  # type: ignore[attr-defined]
    _, (index_off, _) = decode_footer(raw[-FOOTER_LEN:], "t")
    offset = {"footer": size - FOOTER_LEN + 3, "magic": size - 2, "index": index_off + 5}[where]
    flip(p.data.files, offset)  # type: ignore[attr-defined]
    with pytest.raises(Corruption, match=H.name + " at offset"):
        await open_reader(p.data)


async def test_truncated_file_is_corruption() -> None:
    p = memory_persistence()
    await build(p.data, entries(300))
    p.data.files[H] = p.data.files[H][:-10]  # type: ignore[attr-defined]
    with pytest.raises(Corruption, match=H.name):
        await open_reader(p.data)
    p.data.files[H] = b"short"  # type: ignore[attr-defined]
    with pytest.raises(Corruption, match=H.name + " at offset 0"):
        await open_reader(p.data)


async def test_table_cache_bounds_open_readers_and_reports_missing() -> None:
    p = memory_persistence()
    handles = [FileHandle(i, 0) for i in range(2, 8)]
    for h in handles:
        b = SstBuilder(h, await p.data.open_sequential_writer(h))
        b.add(make_internal_key(b"k%d" % h.id, 1, KIND_VALUE), b"v")
        await b.finish()
    tc = TableCache(p.data, BlockCache(1 << 20), capacity=2)
    held = await tc.find(handles[0])
    for h in handles[1:]:
        tc.release(await tc.find(h))
    assert len(tc) == 2
    # The evicted-but-referenced reader still works until released.
    assert await held.get(seek_key(b"k2"), user_prefix(b"k2")) is not None
    tc.release(held)
    await tc.evict(handles[-1])
    with pytest.raises(Corruption, match="missing"):
        await tc.find(FileHandle(99, 0))
    await tc.close()
    assert p.data.open_readers == 0  # type: ignore[attr-defined]


def test_block_cache_is_a_bounded_lru_and_erases_files() -> None:
    from cachedaemon.lsm.block import decode_block
    from cachedaemon.lsm.block_builder import BlockBuilder

    bb = BlockBuilder()
    bb.add(b"k", b"v" * 100)
    payload = bb.finish()
    cache = BlockCache(3 * len(payload))
    a, b = cache.file_number(FileHandle(1, 0)), cache.file_number(FileHandle(2, 0))
    assert a != b and cache.file_number(FileHandle(1, 0)) == a
    for off in range(3):
        cache.insert((a, off), decode_block(payload, "t"))
    assert cache.get((a, 0)) is not None  # now most recent
    cache.insert((b, 0), decode_block(payload, "t"))  # evicts (a, 1), the least recent
    assert cache.get((a, 1)) is None and cache.get((a, 2)) is not None
    assert cache.usage_bytes <= cache.capacity_bytes and len(cache) == 3
    cache.erase_file(FileHandle(1, 0))
    assert len(cache) == 1 and cache.get((b, 0)) is not None
    assert cache.hits == 3


def test_block_cache_file_numbers_are_never_reused() -> None:
    cache = BlockCache(1 << 20)
    a = cache.file_number(FileHandle(1, 0))
    b = cache.file_number(FileHandle(2, 0))
    cache.erase_file(FileHandle(1, 0))
    c = cache.file_number(FileHandle(3, 0))
    assert len({a, b, c}) == 3


class _Collect:
    """A SequentialWriter that keeps what it is given, to compare two builders' bytes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def append(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    async def close(self) -> None:
        pass

    async def abort(self) -> None:
        self.parts.clear()


@pytest.mark.parametrize("seed", range(40))
async def test_add_many_builds_the_same_bytes_as_add(seed: int) -> None:
    """The flush's inlined ``add_many`` must stay byte-for-byte the builder's ``add``."""
    from cachedaemon.lsm.memtable import MemTable

    rnd = random.Random(seed)
    mem = MemTable()
    for seqno in range(1, rnd.randrange(2, 400)):
        mem.add(seqno, rnd.choice([0, 1]), rnd.randbytes(rnd.randrange(0, 6)),
                rnd.randbytes(rnd.randrange(0, 50)))
    entries = list(mem.entries())
    options = {
        "bloom_bits_per_key": rnd.choice([0, 10]),
        "restart_interval": rnd.choice([1, 2, 16]),
        "block_size": rnd.choice([16, 200, 4096]),
        "compression": rnd.choice(["none", "zstd", "lz4"]),
    }

    async def build(many: bool, seqnos: tuple[int, int] | None) -> tuple[object, ...]:
        out = _Collect()
        b = SstBuilder(FileHandle(2), out, **options)  # type: ignore[arg-type]
        if many:
            step = rnd.choice([1, 5, 1000])
            for i in range(0, len(entries), step):
                b.add_many(entries[i : i + step], seqnos)
        else:
            for k, v in entries:
                b.add(k, v)
        await b.finish()
        return (b"".join(out.parts), b.smallest, b.largest, b.oldest_seqno, b.newest_seqno,
                b.num_entries)

    one_by_one = await build(False, None)
    assert await build(True, None) == one_by_one
    assert await build(True, (mem.first_seqno, mem.last_seqno)) == one_by_one


@pytest.mark.parametrize("seed", range(4))
async def test_iterator_moves_like_a_sorted_list_across_runs_and_blocks(seed: int) -> None:
    """Random seeks and steps both ways over an SST of small blocks with short runs; the
    iterator decodes runs lazily, so every run and block boundary is crossed both ways."""
    rnd = random.Random(seed)
    p = memory_persistence()
    items = entries(rnd.randrange(1, 400), seed)
    await build(p.data, items, block_size=rnd.choice([64, 256, 1024]),
                restart_interval=rnd.randrange(1, 8))
    table = await open_reader(p.data)
    keys = [k for k, _ in items]
    it = table.iterator()
    pos = -1
    for _ in range(300):
        move = rnd.choice(["seek", "first", "last", "next", "prev", "next", "prev"])
        if move in ("next", "prev") and not 0 <= pos < len(items):
            move = "seek"
        if move == "seek":
            target = rnd.choice(keys)[:-rnd.randrange(0, 12)] + rnd.choice([b"", b"\x00", b"\xff"])
            await it.seek(target)
            pos = next((i for i, k in enumerate(keys) if k >= target), len(keys))
        elif move == "first":
            await it.seek_to_first()
            pos = 0
        elif move == "last":
            await it.seek_to_last()
            pos = len(keys) - 1
        elif move == "next":
            await it.next()
            pos += 1
        else:
            await it.prev()
            pos -= 1
        if 0 <= pos < len(items):
            assert it.valid()
            assert (it.key(), it.value()) == items[pos]
        else:
            assert not it.valid()


async def test_a_seek_decodes_one_run_of_its_block() -> None:
    p = memory_persistence()
    items = entries(2000)
    await build(p.data, items, block_size=4096)
    table = await open_reader(p.data)
    it = table.iterator()
    await it.seek(items[1000][0])
    assert it.key() == items[1000][0]
    block = await table.read_block(it._bi)
    assert block.nruns > 1
    assert block._keys is None  # not decoded whole
    assert sum(r is not None for r in block._runs) == 1
