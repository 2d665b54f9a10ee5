"""cachedaemon: a bounded local-disk cache in front of an S3-compatible bucket, and an LSM
metastore whose SST files live in the bucket and are read back through that cache.

Layers, lowest first: ``errors``/``clock``/``units``/``config`` -> ``core`` -> ``remote`` ->
``cache`` -> ``lsm`` -> ``metastore`` -> ``server``/``client``/``cli``. See ``docs/`` and
``README.md``.
"""

__version__ = "0.1.0"
