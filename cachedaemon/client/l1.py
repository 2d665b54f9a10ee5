"""``L1Client``: the typed Python API of the L1 metastore routes (``/v1/l1/{domain}/...``).

Wraps an :class:`~cachedaemon.client.async_client.AsyncClient` (its session, token and error
decoding) for one domain. Requests and answers are the msgspec Structs of
:mod:`cachedaemon.metastore.l1.types`; errors come back as the L1 kinds —
:class:`MissingPartition` (404 on a partition), :class:`InvalidRequest` (400),
:class:`OutOfRange` (416), :class:`TransportError` (502) — other errors as the client raises them
(``Fenced``/``ReadOnly`` 409, ``DaemonUnreachable``...).

:class:`SyncL1Client` is the same API, blocking, over a :class:`~cachedaemon.client.Client`.

Use from one event loop, like the client it wraps::

    async with AsyncClient(url) as client:
        l1 = L1Client(client, "meta")
        (oid,) = await l1.preregister_objects(1)
        await client.put(l1.object_key(oid), data)        # l1/meta/objects/<oid>
        await l1.add_objects([NewObject(oid=oid, ...)], [TermStart(...)])
        offsets = await l1.get_offsets(TopicIdPartition(topic, 0))
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from cachedaemon.client.async_client import AsyncClient
from cachedaemon.client.sync_client import Client
from cachedaemon.errors import (
    CacheDaemonError,
    InvalidArgument,
    InvalidKey,
    InvalidRange,
    NotFound,
    UpstreamError,
)
from cachedaemon.metastore.l1.errors import (
    InvalidRequest,
    MissingPartition,
    OutOfRange,
    TransportError,
)
from cachedaemon.metastore.l1.keys import TopicIdPartition, object_bucket_key
from cachedaemon.metastore.l1.types import (
    AddObjectsRequest,
    AddObjectsResponse,
    CommitCompactionRequest,
    CompactionInfo,
    CompactionInfos,
    CompactionInfosRequest,
    CompactionUpdate,
    CompactObjectsRequest,
    CountAnswer,
    EndOffsetAnswer,
    EpochsResponse,
    ExtentList,
    ExtentLocation,
    GcResult,
    NewObject,
    ObjectIds,
    ObjectInfo,
    ObjectList,
    OffsetAnswer,
    Offsets,
    PartitionEpoch,
    PartitionInfo,
    PartitionRef,
    PreregisterRequest,
    RemoveTopicsRequest,
    ReplaceObjectsRequest,
    SizeAnswer,
    StartOffsetBody,
    TermAnswer,
    TermStart,
)

S = TypeVar("S")


def _translate(exc: CacheDaemonError) -> CacheDaemonError:
    if isinstance(exc, NotFound) and not isinstance(exc, MissingPartition):
        return MissingPartition(exc.message)
    if isinstance(exc, InvalidArgument) and not isinstance(exc, InvalidKey | InvalidRequest):
        return InvalidRequest(exc.message)
    if isinstance(exc, InvalidRange):
        return OutOfRange(exc.message)
    if isinstance(exc, UpstreamError) and not isinstance(exc, TransportError):
        return TransportError(exc.message)
    return exc


class L1Client:
    def __init__(self, client: AsyncClient, domain: str) -> None:
        self.client = client
        self.domain = domain
        self._base = f"/v1/l1/{quote(domain, safe='')}"

    def object_key(self, oid: uuid.UUID) -> str:
        """The bucket key to upload object ``oid`` of this domain to (and read it from):
        ``l1/<domain>/objects/<oid>``."""
        return object_bucket_key(self.domain, oid)

    def _partition(self, tidp: TopicIdPartition, suffix: str = "") -> str:
        return f"{self._base}/partitions/{tidp.topic_id}/{tidp.partition}{suffix}"

    async def _request(self, method: str, path: str, answer: type[S], *, body: Any = None,
                       query: Mapping[str, str | int | None] | None = None) -> S:
        data = None if body is None else msgspec.json.encode(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        try:
            raw = await self.client._call(method, path, query=query, data=data, headers=headers)
        except CacheDaemonError as exc:
            raise _translate(exc) from exc
        try:
            return msgspec.json.decode(raw, type=answer)
        except msgspec.MsgspecError as exc:
            raise CacheDaemonError(f"{method} {path}: unexpected answer {raw[:200]!r}") from exc

    # --- writes ------------------------------------------------------------------------------

    async def add_objects(self, objects: Sequence[NewObject], terms: Sequence[TermStart]
                          ) -> dict[TopicIdPartition, int]:
        """Register preregistered objects; returns the corrected next offsets (partitions whose
        extents were not added)."""
        got = await self._request("POST", self._base + "/objects/add", AddObjectsResponse,
                                  body=AddObjectsRequest(objects=list(objects),
                                                         terms=list(terms)))
        return {TopicIdPartition(p.topic_id, p.partition): p.next_offset
                for p in got.corrected_next_offsets}

    @staticmethod
    def _epochs(got: EpochsResponse) -> dict[TopicIdPartition, int]:
        return {TopicIdPartition(p.topic_id, p.partition): p.compaction_epoch
                for p in got.compaction_epochs}

    async def replace_objects(self, objects: Sequence[NewObject],
                              expected_epochs: Mapping[TopicIdPartition, int]
                              ) -> dict[TopicIdPartition, int]:
        body = ReplaceObjectsRequest(objects=list(objects), expected_epochs=[
            PartitionEpoch(topic_id=k.topic_id, partition=k.partition, compaction_epoch=v)
            for k, v in expected_epochs.items()])
        return self._epochs(await self._request("POST", self._base + "/objects/replace",
                                                EpochsResponse, body=body))

    async def compact_objects(self, objects: Sequence[NewObject],
                              updates: Sequence[CompactionUpdate]
                              ) -> dict[TopicIdPartition, int]:
        body = CompactObjectsRequest(objects=list(objects), updates=list(updates))
        return self._epochs(await self._request("POST", self._base + "/objects/compact",
                                                EpochsResponse, body=body))

    async def commit_compaction_metadata(self, updates: Sequence[CompactionUpdate]
                                         ) -> dict[TopicIdPartition, int]:
        body = CommitCompactionRequest(updates=list(updates))
        return self._epochs(await self._request("POST", self._base + "/compaction/commit",
                                                EpochsResponse, body=body))

    async def set_start_offset(self, tidp: TopicIdPartition, start_offset: int) -> Offsets:
        return await self._request("POST", self._partition(tidp, "/start_offset"), Offsets,
                                   body=StartOffsetBody(start_offset=start_offset))

    async def remove_topics(self, topic_ids: Iterable[uuid.UUID]) -> int:
        got = await self._request("POST", self._base + "/topics/remove", CountAnswer,
                                  body=RemoveTopicsRequest(topic_ids=list(topic_ids)))
        return got.count

    async def preregister_objects(self, count: int | None = None, *,
                                  oids: Iterable[uuid.UUID] | None = None) -> list[uuid.UUID]:
        """``count`` fresh ids, or the caller's ``oids`` (each must be new)."""
        body = PreregisterRequest(count=count, oids=None if oids is None else list(oids))
        got = await self._request("POST", self._base + "/objects/preregister", ObjectIds,
                                  body=body)
        return got.oids

    async def remove_objects(self, oids: Iterable[uuid.UUID]) -> int:
        got = await self._request("POST", self._base + "/objects/remove", CountAnswer,
                                  body=ObjectIds(oids=list(oids)))
        return got.count

    async def collect_garbage(self) -> GcResult:
        """One object GC round on the daemon, now."""
        return await self._request("POST", self._base + "/gc", GcResult)

    # --- queries -----------------------------------------------------------------------------

    async def get_partition(self, tidp: TopicIdPartition) -> PartitionInfo:
        return await self._request("GET", self._partition(tidp), PartitionInfo)

    async def get_offsets(self, tidp: TopicIdPartition) -> Offsets:
        return await self._request("GET", self._partition(tidp, "/offsets"), Offsets)

    async def get_size(self, tidp: TopicIdPartition) -> int:
        return (await self._request("GET", self._partition(tidp, "/size"), SizeAnswer)).size

    async def get_first_ge(self, tidp: TopicIdPartition, offset: int) -> ExtentLocation:
        return await self._request("GET", self._partition(tidp, "/first"), ExtentLocation,
                                   query={"offset": offset})

    async def get_first_ge_timestamp(self, tidp: TopicIdPartition, timestamp: int,
                                     min_offset: int = 0) -> ExtentLocation:
        return await self._request("GET", self._partition(tidp, "/first"), ExtentLocation,
                                   query={"timestamp": timestamp, "min_offset": min_offset})

    async def get_first_offset_for_bytes(self, tidp: TopicIdPartition, nbytes: int) -> int:
        got = await self._request("GET", self._partition(tidp, "/first_offset_for_bytes"),
                                  OffsetAnswer, query={"bytes": nbytes})
        return got.offset

    async def get_term_for_offset(self, tidp: TopicIdPartition, offset: int) -> int:
        got = await self._request("GET", self._partition(tidp, "/term"), TermAnswer,
                                  query={"offset": offset})
        return got.term

    async def get_end_offset_for_term(self, tidp: TopicIdPartition, term: int) -> int:
        got = await self._request("GET", self._partition(tidp, "/term_end"), EndOffsetAnswer,
                                  query={"term": term})
        return got.end_offset

    async def get_compaction_info(self, tidp: TopicIdPartition,
                                  tombstone_removal_upper_bound: int = -1) -> CompactionInfo:
        return await self._request(
            "GET", self._partition(tidp, "/compaction"), CompactionInfo,
            query={"tombstone_removal_upper_bound": tombstone_removal_upper_bound})

    async def get_compaction_infos(self, tidps: Iterable[TopicIdPartition],
                                   tombstone_removal_upper_bound: int = -1
                                   ) -> dict[TopicIdPartition, CompactionInfo | None]:
        """Compaction state of many partitions from one snapshot (None: not in the
        metastore)."""
        body = CompactionInfosRequest(
            partitions=[PartitionRef(topic_id=t.topic_id, partition=t.partition) for t in tidps],
            tombstone_removal_upper_bound=tombstone_removal_upper_bound)
        got = await self._request("POST", self._base + "/compaction/infos", CompactionInfos,
                                  body=body)
        return {TopicIdPartition(i.topic_id, i.partition): i.info for i in got.infos}

    async def get_extents(self, tidp: TopicIdPartition, min_offset: int = 0,
                          max_offset: int | None = None, *, limit: int = 1000,
                          reverse: bool = False) -> ExtentList:
        return await self._request(
            "GET", self._partition(tidp, "/extents"), ExtentList,
            query={"min_offset": min_offset, "max_offset": max_offset, "limit": limit,
                   "reverse": 1 if reverse else 0})

    async def get_object(self, oid: uuid.UUID) -> ObjectInfo | None:
        try:
            return await self._request("GET", f"{self._base}/objects/{oid}", ObjectInfo)
        except MissingPartition:
            return None

    async def list_objects(self, start_after: uuid.UUID | None = None, limit: int = 1000
                           ) -> ObjectList:
        return await self._request(
            "GET", self._base + "/objects", ObjectList,
            query={"start_after": None if start_after is None else str(start_after),
                   "limit": limit})


class SyncL1Client:
    """:class:`L1Client`, blocking: each call runs on the wrapped :class:`Client`'s loop."""

    def __init__(self, client: Client, domain: str) -> None:
        self.client = client
        self.aio = L1Client(client._async, domain)

    def object_key(self, oid: uuid.UUID) -> str:
        return self.aio.object_key(oid)

    def add_objects(self, objects: Sequence[NewObject], terms: Sequence[TermStart]
                    ) -> dict[TopicIdPartition, int]:
        return self.client._run(self.aio.add_objects(objects, terms))

    def replace_objects(self, objects: Sequence[NewObject],
                        expected_epochs: Mapping[TopicIdPartition, int]
                        ) -> dict[TopicIdPartition, int]:
        return self.client._run(self.aio.replace_objects(objects, expected_epochs))

    def compact_objects(self, objects: Sequence[NewObject], updates: Sequence[CompactionUpdate]
                        ) -> dict[TopicIdPartition, int]:
        return self.client._run(self.aio.compact_objects(objects, updates))

    def commit_compaction_metadata(self, updates: Sequence[CompactionUpdate]
                                   ) -> dict[TopicIdPartition, int]:
        return self.client._run(self.aio.commit_compaction_metadata(updates))

    def set_start_offset(self, tidp: TopicIdPartition, start_offset: int) -> Offsets:
        return self.client._run(self.aio.set_start_offset(tidp, start_offset))

    def remove_topics(self, topic_ids: Iterable[uuid.UUID]) -> int:
        return self.client._run(self.aio.remove_topics(topic_ids))

    def preregister_objects(self, count: int | None = None, *,
                            oids: Iterable[uuid.UUID] | None = None) -> list[uuid.UUID]:
        return self.client._run(self.aio.preregister_objects(count, oids=oids))

    def remove_objects(self, oids: Iterable[uuid.UUID]) -> int:
        return self.client._run(self.aio.remove_objects(oids))

    def collect_garbage(self) -> GcResult:
        return self.client._run(self.aio.collect_garbage())

    def get_partition(self, tidp: TopicIdPartition) -> PartitionInfo:
        return self.client._run(self.aio.get_partition(tidp))

    def get_offsets(self, tidp: TopicIdPartition) -> Offsets:
        return self.client._run(self.aio.get_offsets(tidp))

    def get_size(self, tidp: TopicIdPartition) -> int:
        return self.client._run(self.aio.get_size(tidp))

    def get_first_ge(self, tidp: TopicIdPartition, offset: int) -> ExtentLocation:
        return self.client._run(self.aio.get_first_ge(tidp, offset))

    def get_first_ge_timestamp(self, tidp: TopicIdPartition, timestamp: int,
                               min_offset: int = 0) -> ExtentLocation:
        return self.client._run(self.aio.get_first_ge_timestamp(tidp, timestamp, min_offset))

    def get_first_offset_for_bytes(self, tidp: TopicIdPartition, nbytes: int) -> int:
        return self.client._run(self.aio.get_first_offset_for_bytes(tidp, nbytes))

    def get_term_for_offset(self, tidp: TopicIdPartition, offset: int) -> int:
        return self.client._run(self.aio.get_term_for_offset(tidp, offset))

    def get_end_offset_for_term(self, tidp: TopicIdPartition, term: int) -> int:
        return self.client._run(self.aio.get_end_offset_for_term(tidp, term))

    def get_compaction_info(self, tidp: TopicIdPartition,
                            tombstone_removal_upper_bound: int = -1) -> CompactionInfo:
        return self.client._run(self.aio.get_compaction_info(tidp,
                                                             tombstone_removal_upper_bound))

    def get_compaction_infos(self, tidps: Iterable[TopicIdPartition],
                             tombstone_removal_upper_bound: int = -1
                             ) -> dict[TopicIdPartition, CompactionInfo | None]:
        return self.client._run(self.aio.get_compaction_infos(tidps,
                                                              tombstone_removal_upper_bound))

    def get_extents(self, tidp: TopicIdPartition, min_offset: int = 0,
                    max_offset: int | None = None, *, limit: int = 1000,
                    reverse: bool = False) -> ExtentList:
        return self.client._run(self.aio.get_extents(tidp, min_offset, max_offset, limit=limit,
                                                     reverse=reverse))

    def get_object(self, oid: uuid.UUID) -> ObjectInfo | None:
        return self.client._run(self.aio.get_object(oid))

    def list_objects(self, start_after: uuid.UUID | None = None, limit: int = 1000
                     ) -> ObjectList:
        return self.client._run(self.aio.list_objects(start_after, limit))
