"""Issue 18 end to end, against real daemons (one shard and two): the miss-ratio curve in the
API and /metrics, explain, the reservations listing, hot set publishing, and the warm start
of a second node from the first one's hot set."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, run_cli, start_daemon

KiB = 1024


def call(d: DaemonProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(d.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def jcall(d: DaemonProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    status, _, raw = call(d, method, path, data,
                          {"Content-Type": "application/json"} if data else None)
    return status, json.loads(raw) if raw else None


def test_mrc_route_and_metric(daemon: DaemonProcess) -> None:
    for i in range(20):
        assert call(d := daemon, "PUT", f"/v1/objects/mrc/{i}", b"m" * 4096)[0] == 201
        assert call(d, "GET", f"/v1/objects/mrc/{i}")[0] == 200
    status, curve = jcall(daemon, "GET", "/v1/cache/mrc")
    assert status == 200 and curve["enabled"]
    assert len(curve["sizes"]) == len(curve["hit_ratios"]) == 32
    assert curve["sizes"][0] * 8 == pytest.approx(curve["max_bytes"], rel=0.01)
    assert curve["sizes"][-1] == pytest.approx(4 * curve["max_bytes"], rel=0.01)
    assert curve["reads"] >= 20 and 0 < curve["sample_rate"] <= 0.01
    assert all(0.0 <= r <= 1.0 for r in curve["hit_ratios"])
    text = call(daemon, "GET", "/metrics")[2].decode()
    points = re.findall(r'cachedaemon_cache_mrc_hit_ratio\{size_bytes="(\d+)"\} (\S+)', text)
    assert len(points) == 32
    assert [int(s) for s, _ in points] == curve["sizes"]
    assert re.search(r"^cachedaemon_cache_stale_reservations 0\.0$", text, re.M)
    assert re.search(r'^cachedaemon_cache_evictions_total\{reason="lru_trim"\} 0\.0$', text, re.M)


def test_explain(daemon: DaemonProcess) -> None:
    assert call(daemon, "PUT", "/v1/objects/why/a", b"a" * 3000)[0] == 201
    status, e = jcall(daemon, "GET", "/v1/cache/explain/why/a")
    assert status == 200 and e["state"] == "cached" and e["cached"]["size"] == 3000
    assert 0.0 <= e["cached"]["lru_position"] <= 1.0
    assert call(daemon, "DELETE", "/v1/cache/objects/why/a")[0] == 204
    _, e = jcall(daemon, "GET", "/v1/cache/explain/why%2Fa")
    assert e["state"] == "absent" and e["evicted"]["reason"] == "manual_drop"
    assert call(daemon, "PUT", "/v1/objects/why/b", b"b")[0] == 201
    assert call(daemon, "DELETE", "/v1/objects/why/b")[0] == 204
    _, e = jcall(daemon, "GET", "/v1/cache/explain/why/b")
    assert e["state"] == "absent" and e["evicted"]["reason"] == "deleted"
    _, e = jcall(daemon, "GET", "/v1/cache/explain/why/never")
    assert e["state"] == "absent" and e["evicted"] is None
    status, e = jcall(daemon, "GET", "/v1/cache/explain/.cachedaemon/lsm/x")
    assert status == 400 and e["error"]["code"] == "invalid_key"
    out = run_cli("--url", daemon.url, "explain", "why/a")
    assert out.returncode == 0, out.stderr
    assert b"why/a: absent" in out.stdout and b"dropped by DELETE" in out.stdout


def test_reservations_route(daemon: DaemonProcess) -> None:
    status, res = jcall(daemon, "GET", "/v1/cache/reservations")
    assert status == 200
    assert set(res) >= {"reservations", "waiters", "warn_age_s", "stale"}
    assert res["stale"] == 0 and res["warn_age_s"] == 300.0
    out = run_cli("--url", daemon.url, "reservations")
    assert out.returncode == 0 and b"owner" in out.stdout


def test_stat_mrc_chart(tmp_path: Path) -> None:
    with start_daemon(tmp_path, "--remote", f"file://{tmp_path / 'bucket'}",
                      "--cache-mrc-sample-rate", "1") as daemon:
        out = run_cli("--url", daemon.url, "stat", "--mrc")
        assert out.returncode == 0, out.stderr
        assert b"no reads sampled yet" in out.stdout
        # The curve measures the mean object size over its first 1,024 reads, then samples
        # (every key, at rate 1).
        for i in range(8):
            assert call(daemon, "PUT", f"/v1/objects/chart/{i}", b"c" * 4096)[0] == 201
        for n in range(1100):
            assert call(daemon, "GET", f"/v1/objects/chart/{n % 8}")[0] == 200
        out = run_cli("--url", daemon.url, "stat", "--mrc")
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode()
        assert "byte hit ratio" in text and "100%" in text and "now" in text
        assert "no reads sampled" not in text


def test_hotset_publish_and_list(daemon: DaemonProcess) -> None:
    assert call(daemon, "PUT", "/v1/objects/hot/1", b"h" * 100)[0] == 201
    status, pub = jcall(daemon, "POST", "/v1/cache/hotset")
    assert status == 200 and pub["entries"] >= 1 and pub["key"].startswith(".cachedaemon/hotset/")
    status, listing = jcall(daemon, "GET", "/v1/cache/hotsets")
    assert status == 200
    mine = [h for h in listing["hotsets"] if h["node"] == pub["node"]]
    assert mine and mine[0]["entries"] == pub["entries"]
    status, warm = jcall(daemon, "GET", "/v1/cache/warm")
    assert status == 200 and warm["state"] in ("idle", "done")
    status, bad = jcall(daemon, "POST", "/v1/cache/warm", {"from": "no/such"})
    assert status == 400 and bad["error"]["code"] == "invalid_argument"


# --- the warm start of a second node -------------------------------------------------------------


def zipf_keys(n_keys: int, n: int, seed: int, alpha: float = 1.0) -> list[int]:
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (r + 1) ** alpha for r in range(n_keys)))
    return [bisect.bisect_left(cum, rng.random() * cum[-1]) for _ in range(n)]


def serve(d: DaemonProcess, keys: list[int], head: int | None = None) -> float:
    """GET each key; the share of hits (over the first ``head`` requests if given)."""
    hits: list[bool] = []
    for k in keys:
        status, headers, _ = call(d, "GET", f"/v1/objects/z/{k}")
        assert status == 200
        hits.append(headers.get("X-Cache") == "hit")
    counted = hits[:head] if head else hits
    return sum(counted) / len(counted)


@pytest.mark.parametrize("shards", [1, 2], ids=["b-shards1", "b-shards2"])
def test_warm_start_from_another_nodes_hot_set(tmp_path: Path, shards: int) -> None:
    """Node A serves a Zipf workload through a cache that holds a fifth of the objects, and
    publishes its hot set; node B, empty, starts with --warm-from A and /readyz waiting for the
    warm-up: its hit ratio over the first 1,000 requests of the same workload is within 0.05
    of A's over its last 1,000."""
    bucket = tmp_path / "bucket"
    n_keys = 1500
    rng = random.Random(1)
    sizes = [rng.randrange(2 * KiB, 16 * KiB) for _ in range(n_keys)]
    (bucket / "z").mkdir(parents=True)
    for k, size in enumerate(sizes):
        (bucket / "z" / str(k)).write_bytes(os.urandom(size))
    cache_bytes = sum(sizes) // 5
    common = ("--remote", f"file://{bucket}", "--cache-max-bytes", str(cache_bytes),
              "--cache-max-objects", "100000", "--cache-hotset-interval", "0")
    workload = zipf_keys(n_keys, 4000, seed=2)
    with start_daemon(tmp_path / "a", *common, "--node-id", "node-a") as a:
        serve(a, workload[:3000])
        a_ratio = serve(a, workload[3000:])
        assert 0.3 < a_ratio < 0.95, a_ratio  # the cache matters and is not everything
        assert a.terminate() == 0  # publishes its hot set at shutdown
        assert "hot set published" in a.logs()
    with start_daemon(tmp_path / "b", *common, "--node-id", "node-b", "--warm-from", "node-a",
                      "--cache-warm-before-ready", shards=shards, timeout=60) as b:
        _, warm = jcall(b, "GET", "/v1/cache/warm")
        assert warm["state"] == "done" and warm["source"] == "node-a", warm
        assert warm["keys_done"] > 50 and warm["bytes_done"] <= cache_bytes
        b_ratio = serve(b, workload[3000:])
    assert abs(b_ratio - a_ratio) <= 0.05, (a_ratio, b_ratio)
    # Without the warm-up a node starts cold: over its first 200 requests, far below.
    with start_daemon(tmp_path / "c", *common, "--node-id", "node-c", shards=shards) as c:
        cold = serve(c, workload[3000:], head=200)
    assert cold < a_ratio - 0.15, (cold, a_ratio)
    print(f"hit ratios: A {a_ratio:.3f} (last 1,000), B warmed {b_ratio:.3f} (first 1,000), "
          f"cold {cold:.3f} (first 200); warm-up {warm['keys_done']} objects, "
          f"{warm['bytes_done']} bytes in {warm['elapsed_s']:.2f}s")


def test_cli_warm_on_a_running_daemon(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "w").mkdir(parents=True)
    for i in range(30):
        (bucket / "w" / str(i)).write_bytes(b"w" * 5000)
    common = ("--remote", f"file://{bucket}", "--cache-max-bytes", "4MiB",
              "--cache-hotset-interval", "0")
    with start_daemon(tmp_path / "a", *common, "--node-id", "a") as a:
        for i in range(30):
            assert call(a, "GET", f"/v1/objects/w/{i}")[0] == 200
        out = run_cli("--url", a.url, "hotset", "--publish")
        assert out.returncode == 0 and b"a\t" in out.stdout, out
    with start_daemon(tmp_path / "b", *common, "--node-id", "b", shards=2) as b:
        out = run_cli("--url", b.url, "warm", "--from", "any")
        assert out.returncode == 0, out.stderr
        assert b"warm-up done: 30 of 30 objects" in out.stdout, out.stdout
        assert call(b, "GET", "/v1/objects/w/7")[1]["X-Cache"] == "hit"
        out = run_cli("--url", b.url, "warm", "--from", "nobody", "--json")
        assert out.returncode == 1
        assert json.loads(out.stdout)["state"] == "failed"


def test_a_multi_shard_daemon_publishes_its_hot_set_at_shutdown(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with start_daemon(tmp_path / "a", "--remote", f"file://{bucket}", "--node-id", "two",
                      "--cache-hotset-interval", "0", shards=2) as a:
        for i in range(6):
            assert call(a, "PUT", f"/v1/objects/s/{i}", b"s" * 1000)[0] == 201
        assert a.terminate() == 0
        logs = a.logs()
    assert "hot set published to .cachedaemon/hotset/two: 6 objects" in logs, logs[-2000:]
    assert (bucket / ".cachedaemon" / "hotset" / "two").is_file()
