"""Session-wide fixtures: a real moto S3 server, fresh buckets on it, and object stores.

- ``moto_endpoint`` (session): starts ``python -m moto.server`` on a free 127.0.0.1 port in
  its own process group, waits until it answers, yields ``"http://127.0.0.1:PORT"`` and stops
  it by PID at the end of the session. If pytest itself is killed, the server gets SIGTERM
  from the kernel (``PR_SET_PDEATHSIG``) and an ``atexit`` hook covers ordinary exits.
- ``s3_bucket``: a fresh bucket (uuid name) on that server, per test.
- ``object_store``: an :class:`ObjectStore` parametrised over ``memory``, ``local`` (a
  ``file://`` directory under ``tmp_path``) and ``s3`` (``S3ObjectStore`` on a fresh bucket);
  closed after the test. ``make_object_store(kind)`` builds more of the same kind.

Helpers for other test packages: :func:`bare_s3_client` (a synchronous botocore client) and
:func:`bare_aio_s3_client` (an aiobotocore one) for checks the store does not offer, such as
listing multipart uploads.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (see below)
import pytest

from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.local import LocalObjectStore
from cachedaemon.remote.memory import MemoryObjectStore
from cachedaemon.remote.s3 import S3ObjectStore

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

MOTO_START_TIMEOUT_S = 30.0
OBJECT_STORE_KINDS = ["memory", "local", "s3"]


# hypothesis is imported up front: its pytest plugin imports it at the end of a session that
# ran no hypothesis test, and CPython 3.11.7's ast.parse (which pytest's assertion rewriting
# calls on that import) can then fail with "SystemError: AST constructor recursion depth
# mismatch" after uvloop-heavy tests (seen with tests/server/test_hostile.py followed by
# tests/server/http), turning a green run red.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), own process group."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_moto_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto server process; returns (process, endpoint) once it answers."""
    last_error: Exception | None = None
    for _ in range(3):  # the free port can be taken between probe and bind: try again
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + MOTO_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1.0):
                    return proc, endpoint
            except Exception as exc:
                last_error = exc
                time.sleep(0.05)
        stop_moto_server(proc)
    raise RuntimeError(f"moto server did not start: {last_error}")


def stop_moto_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    proc, endpoint = start_moto_server()
    atexit.register(stop_moto_server, proc)
    try:
        yield endpoint
    finally:
        stop_moto_server(proc)


_BOTOCORE_SESSION: Any = None

#: What the bare clients below share: moto's region and dummy credentials; with
#: :func:`_moto_client_config`, path-style addressing and no retries (a test-side check must see
#: the first failure).
_MOTO_CLIENT_ARGS: dict[str, Any] = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


def _moto_client_config() -> dict[str, Any]:
    """The bare clients' ``Config`` arguments (fresh dicts each time: a client may keep them)."""
    return {"s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 1}}


def bare_s3_client(endpoint: str) -> Any:
    """A plain synchronous botocore S3 client on the moto server (for test-side checks)."""
    global _BOTOCORE_SESSION
    import botocore.session
    from botocore.config import Config

    if _BOTOCORE_SESSION is None:  # loading the S3 model is slow: do it once
        _BOTOCORE_SESSION = botocore.session.get_session()
    return _BOTOCORE_SESSION.create_client(
        "s3", endpoint_url=endpoint, config=Config(**_moto_client_config()), **_MOTO_CLIENT_ARGS
    )


def bare_aio_s3_client(endpoint: str) -> Any:
    """A plain aiobotocore S3 client (an async context manager) on the moto server."""
    from aiobotocore.config import AioConfig

    from cachedaemon.remote.s3 import thread_session

    return thread_session().create_client(
        "s3", endpoint_url=endpoint, config=AioConfig(**_moto_client_config()), **_MOTO_CLIENT_ARGS
    )


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client = bare_s3_client(moto_endpoint)
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


StoreMaker = Callable[..., Awaitable[ObjectStore]]


@pytest.fixture
async def make_object_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreMaker]:
    """``await make_object_store(kind, **options)`` -> a new store; all closed at teardown.

    Options go to the backend's constructor (e.g. ``multipart_threshold`` for S3). Each S3
    store gets its own fresh bucket unless ``bucket=`` is given.
    """
    made: list[ObjectStore] = []

    async def make(kind: str, **options: Any) -> ObjectStore:
        store: ObjectStore
        if kind == "memory":
            store = MemoryObjectStore(**options)
        elif kind == "local":
            root = options.pop("root", None) or tmp_path / f"bucket-{len(made)}"
            store = LocalObjectStore(root, **options)
        elif kind == "s3":
            endpoint = request.getfixturevalue("moto_endpoint")
            bucket = options.pop("bucket", None) or request.getfixturevalue("s3_bucket")
            if any(isinstance(s, S3ObjectStore) and s.bucket == bucket for s in made):
                bucket = f"test-{uuid.uuid4().hex[:20]}"
                client = bare_s3_client(endpoint)
                try:
                    client.create_bucket(Bucket=bucket)
                finally:
                    client.close()
            store = S3ObjectStore(bucket, endpoint_url=endpoint, **options)
        else:
            raise ValueError(f"unknown object store kind {kind!r}")
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            with contextlib.suppress(Exception):
                await store.close()


@pytest.fixture(
    params=[
        "memory",
        "local",
        pytest.param("s3", marks=pytest.mark.s3),
    ]
)
async def object_store(
    request: pytest.FixtureRequest, make_object_store: StoreMaker
) -> ObjectStore:
    """One store of each kind (memory, local, s3), fresh per test."""
    return await make_object_store(str(request.param))


def _descendant_workers() -> list[int]:
    """Worker shard processes descended from this test process."""
    parents: dict[int, int] = {}
    workers: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if rest[0] == "Z":
                continue
            parents[int(entry)] = int(rest[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"cachedaemon.server.worker" in f.read():
                    workers.add(int(entry))
        except (OSError, IndexError):
            continue
    me = os.getpid()
    found = []
    for pid in workers:
        p, hops = parents.get(pid), 0
        while p is not None and p != me and hops < 64:
            p, hops = parents.get(p), hops + 1
        if p == me:
            found.append(pid)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_shard_outlives_the_tests() -> Iterator[None]:
    """Issue 14: no worker shard of a daemon the tests started is left running at the end."""
    yield
    deadline = time.monotonic() + 5
    left = _descendant_workers()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _descendant_workers()
    assert not left, f"worker shard processes left running: {left}"
