"""The real daemon under space pressure and on reload: a degraded disk answers writes with
``503 cache_full`` and ``Retry-After`` and shows in ``/metrics``; SIGHUP (systemd's
``ExecReload=``) applies new cache limits and the log level from the config file, names what
needs a restart, and changes nothing on a bad file."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.http import fetch

MiB = 1024 * 1024


def wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_degraded_disk_refuses_writes_with_503_and_retry_after(tmp_path: Path) -> None:
    # No disk has 1000 TiB free: new writes wait for space, and get 503 after their deadline.
    with start_daemon(tmp_path / "d", "--cache-min-free-bytes", "1000TiB") as d:
        r = await fetch("PUT", f"{d.url}/v1/objects/k", data=b"x" * 1000,
                        headers={"X-Deadline-Ms": "200"})
        assert r.status == 503 and r.error_code == "cache_full", r.body
        assert "low on space" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
        m = (await fetch("GET", f"{d.url}/metrics")).body.decode()
        assert "cachedaemon_cache_puts_blocked 1.0" in m
        assert "cachedaemon_cache_overcommits_total 0.0" in m
        assert "cachedaemon_cache_over_limit_bytes 0.0" in m
        # Reads still work: a miss the cache cannot take streams through from the bucket.
        (tmp_path / "d" / "bucket" / "there").write_bytes(b"hello")
        r = await fetch("GET", f"{d.url}/v1/objects/there")
        assert (r.status, r.body) == (200, b"hello")


def _config(path: Path, max_bytes: str, log_level: str, extra: str = "") -> None:
    path.write_text(f'[server]\nlog_level = "{log_level}"\n{extra}\n'
                    f'[cache]\nmax_bytes = "{max_bytes}"\n')


async def _max_bytes(d: DaemonProcess) -> int:
    return int((await fetch("GET", f"{d.url}/v1/cache")).json()["max_bytes"])


async def test_sighup_reloads_cache_limits_and_log_level(tmp_path: Path) -> None:
    conf = tmp_path / "cachedaemon.toml"
    _config(conf, "1MiB", "info")
    with start_daemon(tmp_path / "d", "--config", str(conf)) as d:
        assert await _max_bytes(d) == MiB
        assert (await fetch("POST", f"{d.url}/v1/cache/trim")).status == 200
        assert " DEBUG " not in d.logs()
        body = b"y" * (3 * MiB // 2)
        assert (await fetch("PUT", f"{d.url}/v1/objects/big", data=body)).status == 413
        _config(conf, "2MiB", "debug", 'shutdown_timeout = "5s"')
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: applied" in d.logs(), "the reload")
        assert await _max_bytes(d) == 2 * MiB
        logs = d.logs()
        assert ("reload: applied server.log_level, cache.max_bytes; a restart applies "
                "server.shutdown_timeout") in logs
        # The object limit follows the byte limit, and the log level is debug now.
        r = await fetch("PUT", f"{d.url}/v1/objects/big", data=body)
        assert r.status == 201, r.body
        assert (await fetch("POST", f"{d.url}/v1/cache/trim")).status == 200
        assert " DEBUG cachedaemon.cache: cache: trim freed" in d.logs()[len(logs):]
        # A bad file: refused, logged, nothing changes, the daemon runs on.
        conf.write_text('[cache]\nmax_bytes = "lots"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in d.logs(), "the refusal")
        assert "cache.max_bytes" in d.logs().split("reload refused")[1]
        assert await _max_bytes(d) == 2 * MiB
        assert d.running
        assert d.terminate() == 0
