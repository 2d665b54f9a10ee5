"""Builders for L1 requests used across the L1 tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from cachedaemon.metastore.l1 import L1Metastore, TopicIdPartition
from cachedaemon.metastore.l1.types import ExtentSpec, NewObject, TermStart

T1 = uuid.UUID(int=1)
T2 = uuid.UUID(int=2)
P0 = TopicIdPartition(T1, 0)
P1 = TopicIdPartition(T1, 1)
Q0 = TopicIdPartition(T2, 0)


def ext(tidp: TopicIdPartition, base: int, last: int, *, filepos: int = 0, length: int = 100,
        ts: int = -1) -> ExtentSpec:
    return ExtentSpec(topic_id=tidp.topic_id, partition=tidp.partition, base_offset=base,
                      last_offset=last, filepos=filepos, len=length, max_timestamp=ts)


def obj(*extents: ExtentSpec, oid: uuid.UUID | None = None, size: int | None = None) -> NewObject:
    """An object laying its extents out back to back; footer right after them."""
    laid = []
    pos = 0
    for e in extents:
        laid.append(ExtentSpec(topic_id=e.topic_id, partition=e.partition,
                               base_offset=e.base_offset, last_offset=e.last_offset,
                               filepos=pos, len=e.len, max_timestamp=e.max_timestamp))
        pos += e.len
    return NewObject(oid=oid or uuid.uuid4(), footer_pos=pos,
                     object_size=size if size is not None else pos + 16, extents=laid)


def term(tidp: TopicIdPartition, t: int, start: int) -> TermStart:
    return TermStart(topic_id=tidp.topic_id, partition=tidp.partition, term=t, start_offset=start)


def terms_for(objects: Sequence[NewObject], t: int = 1) -> list[TermStart]:
    """Term ``t`` starting at the first base offset of every partition the objects hold."""
    first: dict[TopicIdPartition, int] = {}
    for o in objects:
        for e in o.extents:
            tidp = TopicIdPartition(e.topic_id, e.partition)
            first[tidp] = min(first.get(tidp, e.base_offset), e.base_offset)
    return [term(tidp, t, base) for tidp, base in sorted(first.items())]


async def prereg(l1: L1Metastore, *objects: NewObject) -> None:
    """Preregister the objects' ids (as a writer does before uploading them)."""
    await l1.preregister_objects(oids=[o.oid for o in objects])


async def add(l1: L1Metastore, objects: Sequence[NewObject],
              terms: Sequence[TermStart] | None = None) -> dict[TopicIdPartition, int]:
    """Preregister, then add ``objects`` (terms: term 1 from each partition's first base)."""
    await prereg(l1, *objects)
    return await l1.add_objects(objects, terms_for(objects) if terms is None else terms)
