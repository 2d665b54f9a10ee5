"""The command line (``python -m cachedaemon ...`` subprocesses) against the real daemon:
the ``shared/API.md`` "Command line client" contract — output formats, exit statuses 0/1/2,
``--url``/``--token`` and their environment fallbacks — and ``serve``'s configuration errors."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from cachedaemon.client import Client
from cachedaemon.config import SCHEMA
from tests.support.daemon import DaemonProcess, daemon_env, run_cli, start_daemon

TOKEN = "t0ken-for-tests"


@pytest.fixture
def daemon(cli_daemon: DaemonProcess) -> DaemonProcess:
    return cli_daemon


def seed(daemon: DaemonProcess, objects: dict[str, bytes]) -> None:
    """Store objects through the Python client (cheaper than a CLI process each)."""
    with Client(daemon.url) as c:
        for key, body in objects.items():
            c.put(key, body)


def cli(daemon: DaemonProcess, *args: str, input: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return run_cli("--url", daemon.url, *args, input=input, env=env)


def test_put_get_raw_bytes_from_stdin_and_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = bytes(range(256)) * 100  # binary, no trailing newline
    r = cli(daemon, "put", "cli/stdin", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    r = cli(daemon, "put", "cli/dash", "-", input=b"dash")
    assert r.returncode == 0, r.stderr
    src = tmp_path / "src"
    src.write_bytes(data[:1000])
    r = cli(daemon, "put", "cli/file", str(src), "-v")
    assert r.returncode == 0, r.stderr
    key, size, etag = r.stdout.decode().rstrip("\n").split("\t")
    assert (key, size) == ("cli/file", "1000") and etag.startswith('"')

    r = cli(daemon, "get", "cli/stdin")
    assert r.returncode == 0 and r.stdout == data  # exactly the bytes, no added newline
    assert cli(daemon, "get", "cli/dash").stdout == b"dash"
    out = tmp_path / "out"
    r = cli(daemon, "get", "cli/file", "-o", str(out))
    assert r.returncode == 0 and r.stdout == b"" and out.read_bytes() == data[:1000]
    r = cli(daemon, "get", "cli/stdin", "--range", "10-19")
    assert r.stdout == data[10:20]
    r = cli(daemon, "head", "cli/file")
    assert r.returncode == 0 and b"size: 1000\n" in r.stdout

    r = cli(daemon, "put", "cli/missing-file", str(tmp_path / "nope"))
    assert r.returncode == 1 and b"nope" in r.stderr


def test_not_found_and_rm(daemon: DaemonProcess) -> None:
    r = cli(daemon, "get", "cli/never")
    assert r.returncode == 1 and r.stdout == b""
    assert b"not_found" in r.stderr or b"no object" in r.stderr
    assert r.stderr.count(b"\n") == 1
    assert cli(daemon, "rm", "cli/never").returncode == 0  # missing: still 0
    seed(daemon, {"cli/gone": b"x"})
    assert cli(daemon, "rm", "cli/gone").returncode == 0
    assert cli(daemon, "get", "cli/gone").returncode == 1
    r = cli(daemon, "get", "cli/../etc")
    assert r.returncode == 1 and b"invalid_key" in r.stderr


def test_ls_one_key_per_line(daemon: DaemonProcess) -> None:
    keys = ["ls/a", "ls/b/c", "ls/z z"]
    seed(daemon, {k: b"v" for k in [*keys, "lsx"]})
    r = cli(daemon, "ls", "ls/")
    assert r.returncode == 0 and r.stdout.decode().splitlines() == keys
    every = cli(daemon, "ls").stdout.decode().splitlines()
    assert set(keys) | {"lsx"} <= set(every) and every == sorted(every)
    long = cli(daemon, "ls", "-l", "ls/a").stdout.decode().split("\t")
    assert long[0] == "1" and long[2] == "ls/a\n"


def test_stat_text_and_json_and_trim(daemon: DaemonProcess) -> None:
    seed(daemon, {"stat/x": b"x" * 3000})
    r = cli(daemon, "stat", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    for name in ("bytes_used", "objects", "bytes_reserved", "objects_reserved", "max_bytes",
                 "max_objects", "hits", "misses", "trims", "shards"):
        assert isinstance(doc[name], int)
    assert doc["max_bytes"] == 64 * 1024 * 1024 and doc["objects"] >= 1
    r = cli(daemon, "stat")
    lines = dict(line.split(": ", 1) for line in r.stdout.decode().splitlines())
    assert set(lines) == set(doc)
    assert lines["max_bytes"].startswith("64.0 MiB")  # human-readable
    assert lines["objects"] == str(doc["objects"])
    r = cli(daemon, "trim")
    assert r.returncode == 0 and b"bytes_freed: " in r.stdout and b"objects_freed: " in r.stdout


def test_unreachable_daemon_exits_1(tmp_path: Path) -> None:
    r = run_cli("--url", "http://127.0.0.1:1", "stat")
    assert r.returncode == 1
    assert b"cannot reach the daemon at http://127.0.0.1:1" in r.stderr


def test_usage_errors_exit_2() -> None:
    for args in (["get"], ["frobnicate"], ["ls", "--bogus"], ["get", "k", "--range", "x-y"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert b"usage:" in r.stderr


def test_url_env_fallback_and_default(daemon: DaemonProcess) -> None:
    r = run_cli("put", "env/k", input=b"via env", env={"CACHEDAEMON_URL": daemon.url})
    assert r.returncode == 0, r.stderr
    r = run_cli("get", "env/k", env={"CACHEDAEMON_URL": daemon.url})
    assert r.stdout == b"via env"
    # --url beats the environment; and it is accepted after the subcommand too.
    r = run_cli("--url", daemon.url, "get", "env/k", env={"CACHEDAEMON_URL": "http://127.0.0.1:1"})
    assert r.returncode == 0
    r = run_cli("get", "env/k", "--url", daemon.url)
    assert r.returncode == 0 and r.stdout == b"via env"


def test_auth_token_required_when_configured_and_flags_reach_the_daemon(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "data", "--auth-token", TOKEN, "--cache-max-objects", "77",
                      "--server-shutdown-timeout", "2s", "--cache-max-bytes", "3MiB") as d:
        r = run_cli("--url", d.url, "put", "auth/k", input=b"secret")
        assert r.returncode == 1 and b"unauthorized" in r.stderr
        r = run_cli("--url", d.url, "--token", "wrong", "stat")
        assert r.returncode == 1
        r = run_cli("--url", d.url, "--token", TOKEN, "put", "auth/k", input=b"secret")
        assert r.returncode == 0, r.stderr
        r = run_cli("--url", d.url, "get", "auth/k", env={"CACHEDAEMON_AUTH_TOKEN": TOKEN})
        assert r.returncode == 0 and r.stdout == b"secret"
        r = run_cli("--url", d.url, "--token", TOKEN, "stat", "--json",
                    env={"CACHEDAEMON_AUTH_TOKEN": "wrong"})  # --token beats the environment
        assert r.returncode == 0, r.stderr
        # Short aliases and long flags both reached the daemon.
        doc = json.loads(r.stdout)
        assert (doc["max_objects"], doc["max_bytes"], doc["objects"]) == (77, 3 * 1024**2, 1)


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--cache-max-bytes", "lots"], "cache.max_bytes"),
        (["--listen", "nowhere"], "server.listen"),
        (["--server-log-format", "xml"], "server.log_format"),
    ],
)
def test_serve_invalid_config_exits_2_naming_the_setting(
    tmp_path: Path, args: list[str], setting: str
) -> None:
    r = run_cli("serve", "--data-dir", str(tmp_path / "d"), *args)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert setting in err and err.count("\n") == 1, err


def test_serve_invalid_config_from_env_and_file(tmp_path: Path) -> None:
    r = run_cli("serve", env={"CACHEDAEMON_CACHE_MAX_OBJECTS": "many"})
    assert r.returncode == 2 and b"cache.max_objects" in r.stderr
    assert b"CACHEDAEMON_CACHE_MAX_OBJECTS" in r.stderr
    conf = tmp_path / "c.toml"
    conf.write_text('[cache]\nlow_watermark = 7\n')
    r = run_cli("serve", "--config", str(conf))
    assert r.returncode == 2 and b"cache.low_watermark" in r.stderr
    r = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and b"missing.toml" in r.stderr


def test_serve_has_a_flag_for_every_setting() -> None:
    r = run_cli("serve", "--help")
    assert r.returncode == 0
    text = r.stdout.decode()
    for s in SCHEMA:
        assert s.flag in text
        for alias in s.aliases:
            assert alias in text


# --- kv commands (the real metastore routes) --------------------------------------------------


def test_kv_commands(daemon: DaemonProcess) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return cli(daemon, "kv", *args)

    assert run("put", "clidom", "k1", "value one").returncode == 0
    with Client(daemon.url) as c:
        c.kv_put("clidom", b"k2", b"two")
        c.kv_put("clidom", b"j", b"jay")
    r = run("get", "clidom", "k1")
    assert r.returncode == 0 and r.stdout == b"value one"  # raw, no newline
    r = run("scan", "clidom", "--prefix", "k")
    lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [(base64.b64decode(d["key"]), base64.b64decode(d["value"])) for d in lines] == [
        (b"k1", b"value one"), (b"k2", b"two")]
    assert set(lines[0]) == {"key", "value"}
    assert len(run("scan", "clidom", "--limit", "2").stdout.splitlines()) == 2
    assert run("rm", "clidom", "k1").returncode == 0
    r = run("get", "clidom", "k1")
    assert r.returncode == 1 and r.stdout == b"" and b"not_found" in r.stderr
    assert b"clidom\n" in run("domains").stdout
    assert run("flush", "clidom").returncode == 0
    info = json.loads(run("info", "clidom", "--json").stdout)
    assert info["persisted_seqno"] == info["last_seqno"]


# --- progress --------------------------------------------------------------------------------


def _run_with_tty_stderr(args: list[str], input_file: Path) -> tuple[int, bytes]:
    master, slave = pty.openpty()
    with input_file.open("rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachedaemon", *args], env=daemon_env(),
            stdin=stdin, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(30), seen


def test_progress_on_a_terminal_only(daemon: DaemonProcess, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    status, tty_err = _run_with_tty_stderr(["--url", daemon.url, "put", "progress/big",
                                            str(big)], big)
    assert status == 0
    assert b"100%" in tty_err and b"3.0 MiB" in tty_err and b"\r" in tty_err
    status, tty_err = _run_with_tty_stderr(
        ["--url", daemon.url, "get", "progress/big", "-o", str(tmp_path / "copy")], big)
    assert status == 0 and b"100%" in tty_err
    assert (tmp_path / "copy").read_bytes() == big.read_bytes()
    # Piped stderr: nothing at all.
    r = cli(daemon, "get", "progress/big")
    assert r.returncode == 0 and r.stderr == b"" and len(r.stdout) == 3 * 1024 * 1024


def test_serve_passes_only_the_flags_given() -> None:
    """In-process: what ``serve`` hands to load_settings (flag > env > file > default only works
    if flags not typed are absent)."""
    from cachedaemon.cli import _setting_flags, build_parser

    args = build_parser().parse_args(
        ["serve", "--read-only", "--listen", "0.0.0.0:1", "--server-shards", "3",
         "--max-object-bytes", "1MiB", "--config", "x.toml"])
    assert _setting_flags(args) == {
        "server.read_only": "true", "server.listen": "0.0.0.0:1", "server.shards": "3",
        "cache.max_object_bytes": "1MiB"}
    assert args.config == "x.toml"
    assert _setting_flags(build_parser().parse_args(["serve"])) == {}
