"""The LSM storage engine (a LevelDB port after Redpanda's ``lsm``): memtable, SSTs,
leveled compaction, a full-snapshot manifest, and file GC over pluggable persistence
(:mod:`cachedaemon.lsm.io`). Start at :class:`Database`."""

from cachedaemon.lsm.db import Database, Snapshot
from cachedaemon.lsm.db_iter import DBIter
from cachedaemon.lsm.options import Options
from cachedaemon.lsm.write_batch import WriteBatch

__all__ = ["DBIter", "Database", "Options", "Snapshot", "WriteBatch"]
