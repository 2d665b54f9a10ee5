"""Fixtures of the S3 endpoint's end-to-end suites: the real daemon with ``--s3-listen``,
in front of a ``file://`` bucket or a bucket on the session's moto server, in either bucket
mode, with SigV4 credentials; and real clients pointed at it.

``s3d`` (module scope) is one running daemon per matrix point; the default suite runs two
points that between them cover both backends and both modes — (``file``, ``single``) and
(``moto``, ``prefix``) — and ``-m slow`` adds the other two. Each test works under its own
key prefix (:func:`unique`), so the tests of a module share their daemon.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import bare_s3_client
from tests.support.daemon import DaemonProcess, start_daemon

ACCESS_KEY = "cachedaemon-test"
SECRET_KEY = "s3cr3t/with+odd=chars"
REGION = "us-east-1"
S3_LINE = re.compile(r"cachedaemon S3 endpoint on (http://\S+)")
#: (remote, bucket mode) points of the default suite, then the slow ones.
FAST_POINTS = [("file", "single"), ("moto", "prefix")]
SLOW_POINTS = [("file", "prefix"), ("moto", "single")]
MATRIX = [pytest.param(p, id=f"{p[0]}-{p[1]}") for p in FAST_POINTS] + \
    [pytest.param(p, id=f"{p[0]}-{p[1]}", marks=pytest.mark.slow) for p in SLOW_POINTS]


@dataclass
class S3Daemon:
    """A running daemon with its S3 endpoint, and the S3 bucket the tests use."""

    proc: DaemonProcess
    url: str  # the S3 endpoint
    v1: str  # the /v1 API
    remote: str  # file | moto
    mode: str  # single | prefix
    bucket: str  # the S3 bucket name to use
    key_prefix: str  # what the bucket adds in front of a key in the daemon's namespace
    moto_bucket: str | None = None
    data_dir: Path | None = None

    def daemon_key(self, key: str) -> str:
        return self.key_prefix + key


def s3_url(proc: DaemonProcess, timeout: float = 10) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in proc.stdout_lines:
            m = S3_LINE.search(line)
            if m:
                return m.group(1)
        time.sleep(0.02)
    raise RuntimeError(f"no S3 endpoint line; stdout={proc.stdout_lines} logs={proc.logs()}")


@contextlib.contextmanager
def s3_daemon(tmp: Path, remote: str, mode: str, moto_endpoint: str | None = None, *,
              credentials: bool = True, shards: int = 1, args: tuple[str, ...] = (),
              env: dict[str, str] | None = None, bucket: str | None = None
              ) -> Iterator[S3Daemon]:
    """Start a daemon with its S3 endpoint (see the module doc)."""
    env = dict(env or {})
    if credentials:
        env["CACHEDAEMON_S3_ACCESS_KEY_ID"] = ACCESS_KEY
        env["CACHEDAEMON_S3_SECRET_ACCESS_KEY"] = SECRET_KEY
    env["CACHEDAEMON_S3_BUCKET_MODE"] = mode
    moto_bucket = None
    remote_url = None
    if remote == "moto":
        assert moto_endpoint is not None
        moto_bucket = bucket or f"s3e-{uuid.uuid4().hex[:16]}"
        bare = bare_s3_client(moto_endpoint)
        try:
            bare.create_bucket(Bucket=moto_bucket)
        finally:
            bare.close()
        remote_url = f"s3://{moto_bucket}"
    data_dir = tmp / f"data-{uuid.uuid4().hex[:8]}"
    with start_daemon(data_dir, "--s3-listen", "127.0.0.1:0", *args, env=env, shards=shards,
                      remote=remote_url, s3_endpoint=moto_endpoint if remote == "moto" else None,
                      ) as proc:
        url = s3_url(proc)
        if mode == "single":
            name = moto_bucket or "cachedaemon"
            d = S3Daemon(proc, url, proc.url, remote, mode, name, "", moto_bucket, data_dir)
        else:
            d = S3Daemon(proc, url, proc.url, remote, mode, "team-a", "team-a/", moto_bucket,
                         data_dir)
            client(d).create_bucket(Bucket="team-a")
        yield d


def client(d: S3Daemon, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
           addressing: str = "path", retries: int = 1, region: str = REGION,
           endpoint: str | None = None, **config: Any) -> Any:
    """A boto3 S3 client on the daemon's endpoint, as a user would make one."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint or d.url, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name=region,
        config=Config(s3={"addressing_style": addressing},
                      retries={"total_max_attempts": retries}, **config))


def unique(name: str = "t") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=MATRIX)
def s3d(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[S3Daemon]:
    remote, mode = request.param
    moto = request.getfixturevalue("moto_endpoint") if remote == "moto" else None
    with s3_daemon(tmp_path_factory.mktemp("s3d"), remote, mode, moto) as d:
        yield d


@pytest.fixture
def s3(s3d: S3Daemon) -> Any:
    return client(s3d)


def aws_env(d: S3Daemon, home: Path) -> dict[str, str]:
    """The environment of an AWS CLI (or other SDK) process pointed at the daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CACHEDAEMON_"))}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(home / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
                "HOME": str(home)})
    return env
