"""Packaging: ``scripts/dev`` really starts moto and the daemon together and stops both, on
Ctrl-C too. (The systemd unit, the Dockerfile and the compose file are tested in ``tests/ops``.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import bare_s3_client
from tests.support.daemon import daemon_env, run_cli

ROOT = Path(__file__).resolve().parents[2]


# --- scripts/dev -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("stop", ["ctrl-c", "kill-int"])
def test_scripts_dev_starts_moto_and_the_daemon_and_stops_both(tmp_path: Path, stop: str) -> None:
    """``ctrl-c``: SIGINT to the script's whole process group, as a terminal sends it;
    ``kill-int``: SIGINT to the script alone."""
    moto_port = _free_port()
    env = daemon_env({
        "MOTO_PORT": str(moto_port),
        "DEV_VENV": str(Path(sys.executable).parent.parent),
        "DEV_DATA_DIR": str(tmp_path / "dev-data"),
        "DEV_BUCKET": "dev-test-bucket",
    })
    if not (Path(env["DEV_VENV"]) / "bin" / "moto_server").exists():
        pytest.skip("moto_server is not installed next to this Python")
    log = tmp_path / "dev.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(ROOT / "scripts" / "dev"), "--listen", "127.0.0.1:0", "--shards", "1"],
            env=env, stdout=subprocess.PIPE, stderr=err, cwd=tmp_path,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode())
            if "listening on" in raw.decode():
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), (lines, log.read_text())
        url = re.search(r"listening on (\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
        r = run_cli("--url", url, "put", "dev/k", input=b"through moto")
        assert r.returncode == 0, r.stderr
        # The object is in the moto bucket, not only in the cache.
        s3 = bare_s3_client(f"http://127.0.0.1:{moto_port}")
        assert s3.get_object(Bucket="dev-test-bucket", Key="dev/k")["Body"].read() == (
            b"through moto")
        daemon_port = int(url.rsplit(":", 1)[1])
    finally:
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        status = proc.wait(60)
    assert status in (0, 130)
    logs = log.read_text()
    # The daemon was asked to stop once (by the script's SIGTERM), not by SIGINT and again.
    assert "already stopping" not in logs, logs
    assert "stopping: draining" in logs and "stopped" in logs, logs
    deadline = time.monotonic() + 10
    while not (_refused(moto_port) and _refused(daemon_port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _refused(moto_port) and _refused(daemon_port)
    assert os.path.isdir(tmp_path / "dev-data" / "cache")
    assert "bucket s3://dev-test-bucket ready" in log.read_text()
