from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.errors import Corruption
from cachedaemon.lsm.dbformat import KIND_VALUE, make_internal_key
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.lsm.io.persistence import FileHandle
from cachedaemon.lsm.manifest import ManifestState, decode_manifest, encode_manifest
from cachedaemon.lsm.options import NUM_LEVELS, Options
from cachedaemon.lsm.version_edit import FileMeta, VersionEdit
from cachedaemon.lsm.version_set import VersionSet


def meta(fid: int, lo: bytes, hi: bytes, size: int = 100, seq: int = 1) -> FileMeta:
    return FileMeta(
        FileHandle(fid, 1),
        size,
        make_internal_key(lo, seq, KIND_VALUE),
        make_internal_key(hi, seq, KIND_VALUE),
        seq,
        seq,
    )


def state() -> ManifestState:
    levels: list[list[FileMeta]] = [[] for _ in range(NUM_LEVELS)]
    levels[0] = [meta(5, b"a", b"z", seq=9)]
    levels[2] = [meta(3, b"a", b"c"), meta(4, b"d", b"f")]
    return ManifestState(1, 6, 9, [None, b"x" * 12] + [None] * 5, levels)


@given(st.integers(0, 2**40), st.integers(2, 2**40), st.integers(0, 2**56))
def test_round_trip(epoch: int, next_id: int, seqno: int) -> None:
    s = state()
    s.epoch, s.next_file_id, s.last_seqno = epoch, next_id, seqno
    assert decode_manifest(encode_manifest(s)) == s


@given(st.data())
def test_any_damage_is_corruption(data: st.DataObject) -> None:
    raw = bytearray(encode_manifest(state()))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Corruption, match="at offset"):
        decode_manifest(bytes(raw), "m")
    with pytest.raises(Corruption):
        decode_manifest(bytes(raw[: data.draw(st.integers(0, len(raw) - 1))]), "m")


async def test_log_and_apply_installs_only_after_the_write() -> None:
    p = memory_persistence()
    vs = VersionSet(Options(epoch=1), p.metadata)
    assert not await vs.recover()
    edit = VersionEdit(last_seqno=5)
    edit.add_file(0, meta(vs.new_file_id(), b"a", b"b", seq=5))
    p.metadata.failing = True  # type: ignore[attr-defined]
    with pytest.raises(Exception):  # noqa: B017 - whatever the backend raises
        await vs.log_and_apply(edit)
    assert vs.current.num_files(0) == 0 and vs.last_seqno == 0
    p.metadata.failing = False  # type: ignore[attr-defined]
    await vs.log_and_apply(edit)
    assert vs.current.num_files(0) == 1 and vs.last_seqno == 5
    vs2 = VersionSet(Options(epoch=1), p.metadata)
    assert await vs2.recover()
    assert vs2.current.levels == vs.current.levels
    assert (vs2.next_file_id, vs2.last_seqno) == (3, 5)


async def test_recover_reads_newest_manifest_at_or_below_epoch() -> None:
    p = memory_persistence()
    s = state()
    await p.metadata.write_manifest(1, encode_manifest(s))
    vs = VersionSet(Options(epoch=0), p.metadata)
    assert not await vs.recover()  # only a newer epoch exists
    vs = VersionSet(Options(epoch=7), p.metadata)
    assert await vs.recover()
    assert vs.last_seqno == 9 and vs.epoch == 7


async def test_refresh_detects_changes_and_rejects_regressions() -> None:
    p = memory_persistence()
    writer = VersionSet(Options(epoch=1), p.metadata)
    await writer.log_and_apply(VersionEdit(last_seqno=3))
    reader = VersionSet(Options(epoch=2**62, readonly=True), p.metadata)
    assert await reader.recover()
    assert not await reader.refresh()
    edit = VersionEdit(last_seqno=4)
    edit.add_file(1, meta(writer.new_file_id(), b"a", b"b", seq=4))
    await writer.log_and_apply(edit)
    assert await reader.refresh()
    assert reader.current.num_files(1) == 1 and reader.last_seqno == 4
    s = state()
    s.last_seqno = 1
    s.next_file_id = 100
    await p.metadata.write_manifest(1, encode_manifest(s))
    with pytest.raises(Corruption, match="regressed"):
        await reader.refresh()
    await p.metadata.write_manifest(1, b"\x01garbage!")
    with pytest.raises(Corruption):
        await reader.refresh()
