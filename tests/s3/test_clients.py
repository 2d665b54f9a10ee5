"""The S3 endpoint driven by the S3 tools users have, installed as users install them: the AWS
CLI, s3fs/fsspec and the MinIO client from PyPI (the ``test`` extra), rclone from Debian
(installed by the first test that needs it when missing). Each runs over ``s3d``'s matrix of
bucket backends and bucket modes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.s3.conftest import ACCESS_KEY, REGION, SECRET_KEY, S3Daemon, aws_env, client, unique
from tests.support.tools import debian_tool

MiB = 1024 * 1024


def tree(root: Path, files: dict[str, bytes]) -> Path:
    """Files written a minute ago (moto keeps LastModified in whole seconds: a file written in
    the second of its upload would look newer than the object to ``aws s3 sync``)."""
    past = time.time() - 60
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (past, past))
    return root


def blob(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --- the AWS CLI ------------------------------------------------------------------------------


def aws(d: S3Daemon, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "aws"
    config = home / "aws-config"
    if not config.exists():
        config.write_text("[default]\nregion = us-east-1\ns3 =\n    multipart_threshold = 5MB\n"
                          "    multipart_chunksize = 5MB\n    addressing_style = path\n")
    r = subprocess.run([str(exe), "--endpoint-url", d.url, *args], env=aws_env(d, home),
                       capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert r.returncode == 0, f"aws {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def test_aws_cli_cp_sync_ls_rm(s3d: S3Daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    prefix = unique("awscli")
    dest = f"s3://{s3d.bucket}/{prefix}"
    big = blob(12 * MiB + 3, 1)  # above the 5MB multipart threshold: three parts
    aws(s3d, home, "s3", "cp", str(tree(tmp_path / "one", {"big.bin": big}) / "big.bin"),
        f"{dest}/big.bin")
    src = tree(tmp_path / "src", {"a.txt": b"a", "sub/b.txt": b"b" * 1000,
                                  "sub/deeper/c.bin": blob(300_000, 2), "sp ace.txt": b"s"})
    aws(s3d, home, "s3", "sync", str(src), f"{dest}/tree")
    # A second sync has nothing to do: sizes and times agree.
    again = aws(s3d, home, "s3", "sync", str(src), f"{dest}/tree")
    assert again.stdout.strip() == ""
    listing = aws(s3d, home, "s3", "ls", "--recursive", f"{dest}/").stdout
    names = sorted(line.split(maxsplit=3)[3] for line in listing.splitlines())
    assert names == sorted([f"{prefix}/big.bin", f"{prefix}/tree/a.txt",
                            f"{prefix}/tree/sub/b.txt", f"{prefix}/tree/sub/deeper/c.bin",
                            f"{prefix}/tree/sp ace.txt"])
    head = client(s3d).head_object(Bucket=s3d.bucket, Key=f"{prefix}/big.bin")
    assert head["ETag"].endswith('-3"') and head["ContentLength"] == len(big)
    aws(s3d, home, "s3", "cp", f"{dest}/big.bin", str(tmp_path / "big.back"))
    assert (tmp_path / "big.back").read_bytes() == big
    aws(s3d, home, "s3", "sync", f"{dest}/tree", str(tmp_path / "back"))
    assert read_tree(tmp_path / "back") == read_tree(src)
    aws(s3d, home, "s3", "rm", "--recursive", f"{dest}/")
    assert aws(s3d, home, "s3", "ls", "--recursive", f"{dest}/", check=False).stdout == ""


def test_aws_cli_s3api_and_presign(s3d: S3Daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = unique("s3api")
    body = tmp_path / "body"
    body.write_bytes(b"from s3api")
    aws(s3d, home, "s3api", "put-object", "--bucket", s3d.bucket, "--key", key, "--body",
        str(body), "--content-type", "text/plain", "--metadata", "k=v")
    out = aws(s3d, home, "s3api", "head-object", "--bucket", s3d.bucket, "--key", key).stdout
    assert '"ContentType": "text/plain"' in out and '"k": "v"' in out
    url = aws(s3d, home, "s3", "presign", f"s3://{s3d.bucket}/{key}").stdout.strip()
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"from s3api"


# --- rclone ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rclone() -> str:
    return debian_tool("rclone", "rclone")


def run_rclone(tool: str, d: S3Daemon, tmp: Path, *args: str, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
    conf = tmp / "rclone.conf"
    conf.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "AWS_"))}
    env.update({"RCLONE_CONFIG_CD_TYPE": "s3", "RCLONE_CONFIG_CD_PROVIDER": "Other",
                "RCLONE_CONFIG_CD_ACCESS_KEY_ID": ACCESS_KEY,
                "RCLONE_CONFIG_CD_SECRET_ACCESS_KEY": SECRET_KEY,
                "RCLONE_CONFIG_CD_ENDPOINT": d.url, "RCLONE_CONFIG_CD_REGION": REGION,
                "RCLONE_CONFIG_CD_FORCE_PATH_STYLE": "true", "HOME": str(tmp)})
    r = subprocess.run([tool, "--config", str(conf), "--s3-upload-cutoff", "5M",
                        "--s3-chunk-size", "5M", "--retries", "1", "--low-level-retries", "1",
                        *args], env=env, capture_output=True, text=True, timeout=180,
                       check=False)
    if check:
        assert r.returncode == 0, f"rclone {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def test_rclone_copy_sync_check_lsf(s3d: S3Daemon, tmp_path: Path, rclone: str) -> None:
    prefix = unique("rclone")
    remote = f"cd:{s3d.bucket}/{prefix}"
    src = tree(tmp_path / "src", {"a.txt": b"alpha", "dir/b.txt": b"beta" * 100,
                                  "dir/big.bin": blob(11 * MiB, 3), "é ü.txt": b"unicode"})
    run_rclone(rclone, s3d, tmp_path, "copy", str(src), remote)
    lsf = run_rclone(rclone, s3d, tmp_path, "lsf", "-R", "--files-only", remote).stdout
    assert sorted(lsf.split()) == sorted(["a.txt", "dir/b.txt", "dir/big.bin", "é", "ü.txt"]) \
        or sorted(lsf.splitlines()) == sorted(["a.txt", "dir/b.txt", "dir/big.bin", "é ü.txt"])
    # check compares sizes and MD5s (for the multipart big.bin, the MD5 rclone stored in the
    # object's metadata: it round-trips).
    run_rclone(rclone, s3d, tmp_path, "check", str(src), remote)
    (src / "a.txt").write_bytes(b"alpha, changed")
    (src / "dir" / "b.txt").unlink()
    (src / "new.txt").write_bytes(b"new")
    bad = run_rclone(rclone, s3d, tmp_path, "check", str(src), remote, check=False)
    assert bad.returncode != 0
    run_rclone(rclone, s3d, tmp_path, "sync", str(src), remote)
    run_rclone(rclone, s3d, tmp_path, "check", str(src), remote)
    lsf = run_rclone(rclone, s3d, tmp_path, "lsf", "-R", "--files-only", remote).stdout
    assert sorted(lsf.splitlines()) == sorted(["a.txt", "dir/big.bin", "new.txt", "é ü.txt"])
    run_rclone(rclone, s3d, tmp_path, "copy", remote, str(tmp_path / "back"))
    assert read_tree(tmp_path / "back") == read_tree(src)


# --- s3fs / fsspec --------------------------------------------------------------------------


def s3fs_fs(d: S3Daemon) -> Any:
    import s3fs

    return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, use_listings_cache=False,
                             client_kwargs={"endpoint_url": d.url, "region_name": REGION},
                             config_kwargs={"s3": {"addressing_style": "path"}},
                             skip_instance_cache=True)


def test_s3fs_fsspec(s3d: S3Daemon, tmp_path: Path) -> None:
    import fsspec

    fs = s3fs_fs(s3d)
    base = f"{s3d.bucket}/{unique('s3fs')}"
    fs.pipe(f"{base}/a.txt", b"alpha")
    fs.pipe(f"{base}/dir/b.txt", b"beta")
    assert fs.cat(f"{base}/a.txt") == b"alpha"
    assert fs.cat_file(f"{base}/a.txt", start=1, end=3) == b"lp"
    assert sorted(fs.ls(base, detail=False)) == [f"{base}/a.txt", f"{base}/dir"]
    assert sorted(fs.find(base)) == [f"{base}/a.txt", f"{base}/dir/b.txt"]
    info = fs.info(f"{base}/a.txt")
    assert info["size"] == 5 and info["type"] == "file"
    assert fs.info(f"{base}/dir")["type"] == "directory"
    assert fs.exists(f"{base}/dir/b.txt") and not fs.exists(f"{base}/nope")
    big = blob(11 * MiB, 4)
    with fs.open(f"{base}/big.bin", "wb", block_size=5 * MiB) as f:  # a multipart upload
        for i in range(0, len(big), MiB):
            f.write(big[i:i + MiB])
    with fs.open(f"{base}/big.bin", "rb", block_size=2 * MiB) as f:
        f.seek(5 * MiB - 10)
        assert f.read(20) == big[5 * MiB - 10:5 * MiB + 10]
    local = tmp_path / "local.bin"
    fs.get(f"{base}/big.bin", str(local))
    assert local.read_bytes() == big
    fs.put(str(local), f"{base}/copy.bin")
    assert fs.info(f"{base}/copy.bin")["size"] == len(big)
    fs.rm(f"{base}/dir", recursive=True)
    assert not fs.exists(f"{base}/dir/b.txt")
    # fsspec's URL interface, as pandas and DuckDB-style tools use it.
    of = fsspec.open(f"s3://{base}/a.txt", "rb", key=ACCESS_KEY, secret=SECRET_KEY,
                     client_kwargs={"endpoint_url": s3d.url, "region_name": REGION})
    with of as f:
        assert f.read() == b"alpha"
    fs.rm(base, recursive=True)
    assert not fs.exists(f"{base}/a.txt")


# --- the MinIO client -------------------------------------------------------------------------


def minio_client(d: S3Daemon) -> Any:
    from minio import Minio

    return Minio(d.url.removeprefix("http://"), access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                 secure=False, region=REGION)


def test_minio_client(s3d: S3Daemon, tmp_path: Path) -> None:
    from minio.commonconfig import CopySource
    from minio.deleteobjects import DeleteObject

    mc = minio_client(s3d)
    assert mc.bucket_exists(s3d.bucket)
    if s3d.mode == "prefix":
        name = unique("mc")
        mc.make_bucket(name)
        assert mc.bucket_exists(name)
        mc.remove_bucket(name)
        assert not mc.bucket_exists(name)
    base = unique("minio")
    body = b"minio payload" * 100
    # minio-py signs the payload's SHA-256 over plain HTTP: the endpoint checks it.
    mc.put_object(s3d.bucket, f"{base}/a", io.BytesIO(body), len(body),
                  content_type="text/plain", metadata={"x-amz-meta-team": "a"})
    stat = mc.stat_object(s3d.bucket, f"{base}/a")
    assert (stat.size, stat.content_type, stat.etag) == \
        (len(body), "text/plain", hashlib.md5(body).hexdigest())
    assert stat.metadata["x-amz-meta-team"] == "a"
    resp = mc.get_object(s3d.bucket, f"{base}/a", offset=5, length=10)
    try:
        assert resp.read() == body[5:15]
    finally:
        resp.close()
        resp.release_conn()
    big = tmp_path / "big.bin"
    big.write_bytes(blob(11 * MiB, 5))
    mc.fput_object(s3d.bucket, f"{base}/big.bin", str(big), part_size=5 * MiB)
    assert mc.stat_object(s3d.bucket, f"{base}/big.bin").etag.endswith("-3")
    mc.fget_object(s3d.bucket, f"{base}/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    mc.copy_object(s3d.bucket, f"{base}/copy", CopySource(s3d.bucket, f"{base}/a"))
    names = sorted(o.object_name for o in mc.list_objects(s3d.bucket, prefix=f"{base}/",
                                                          recursive=True))
    assert names == [f"{base}/a", f"{base}/big.bin", f"{base}/copy"]
    top = sorted(o.object_name for o in mc.list_objects(s3d.bucket, prefix=f"{base}/",
                                                         recursive=False))
    assert top == names
    url = mc.presigned_get_object(s3d.bucket, f"{base}/copy")
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == body
    errors = list(mc.remove_objects(s3d.bucket, [DeleteObject(n) for n in names]))
    assert errors == []
    assert list(mc.list_objects(s3d.bucket, prefix=f"{base}/", recursive=True)) == []
