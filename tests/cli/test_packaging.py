"""Packaging: the systemd unit verifies, the Dockerfile and compose file refer to things that
exist (there is no Docker engine here, so nothing is built or run), and ``scripts/dev`` really
starts moto and the daemon together and stops both."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cachedaemon.config import BY_KEY, SCHEMA
from tests.conftest import bare_s3_client
from tests.support.daemon import DaemonProcess, daemon_env, run_cli

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = {s.env for s in SCHEMA}


# --- systemd -----------------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (ROOT / "config" / "cachedaemon.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            name, _, value = line.partition("=")
            out.setdefault(name, []).append(value)
    return out


def test_unit_has_the_required_settings() -> None:
    unit = _unit()
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == [
        "/usr/local/bin/cachedaemon serve --config /etc/cachedaemon/cachedaemon.toml"]
    for name, value in [("Restart", "on-failure"), ("User", "cachedaemon"),
                        ("StateDirectory", "cachedaemon"), ("ProtectSystem", "strict"),
                        ("ReadWritePaths", "/var/lib/cachedaemon"), ("ProtectHome", "yes"),
                        ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                        ("KillSignal", "SIGTERM"), ("TimeoutStopSec", "30"),
                        ("RestartPreventExitStatus", "2")]:
        assert unit[name] == [value], name
    for assignment in unit["Environment"]:
        assert assignment.split("=", 1)[0] in ENV_NAMES


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify insists that ExecStart's binary exists: point it at a stand-in.
    fake = tmp_path / "cachedaemon"
    fake.write_text("#!/bin/sh\nexec true\n")
    fake.chmod(0o755)
    text = (ROOT / "config" / "cachedaemon.service").read_text()
    unit = tmp_path / "cachedaemon.service"
    unit.write_text(text.replace("/usr/local/bin/cachedaemon", str(fake)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       check=False)
    # verify exits 0 on mere parse warnings, so its output must be empty too.
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr


# --- Docker ------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_refers_to_what_exists() -> None:
    """No Docker engine here, so the image is not built; this checks what the build uses."""
    instr = _dockerfile()

    def get(name: str) -> list[str]:
        return [arg for n, arg in instr if n == name]

    assert get("FROM") == ["python:3.11-slim"]
    for arg in get("COPY"):
        for src in arg.split()[:-1]:
            assert (ROOT / src).exists(), src
    user = get("USER")
    assert user and user[-1] not in ("root", "0")
    assert get("EXPOSE") == ["8470"]
    assert json.loads(get("VOLUME")[0]) == ["/var/lib/cachedaemon"]
    env = " ".join(get("ENV"))
    settings = dict(re.findall(r"(CACHEDAEMON_\w+)=(\S+)", env))
    assert set(settings) <= ENV_NAMES
    assert settings["CACHEDAEMON_SERVER_LISTEN"] == "0.0.0.0:8470"
    assert settings["CACHEDAEMON_STORAGE_DATA_DIR"] == "/var/lib/cachedaemon"
    assert json.loads(get("ENTRYPOINT")[0]) == ["cachedaemon"]
    assert "cachedaemon" in _console_scripts()
    health = get("HEALTHCHECK")[0]
    exec_form = json.loads(health[health.index("CMD") + 3:].strip())
    assert exec_form[:2] == ["python", "-c"] and "/healthz" in exec_form[2]
    compile(exec_form[2], "HEALTHCHECK", "exec")
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in ("cachedaemon", "pyproject.toml", "README.md"):
        assert needed not in ignored


def _console_scripts() -> set[str]:
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts: dict[str, str] = doc["project"]["scripts"]
    assert scripts["cachedaemon"] == "cachedaemon.cli:main"
    return set(scripts)


def test_healthcheck_command_works_against_the_daemon(cli_daemon: DaemonProcess) -> None:
    """The HEALTHCHECK's Python, pointed at a real daemon's port."""
    health = next(arg for n, arg in _dockerfile() if n == "HEALTHCHECK")
    code = json.loads(health[health.index("CMD") + 3:].strip())[2]
    ok = subprocess.run([sys.executable, "-c", code.replace(":8470", f":{cli_daemon.port}")],
                        timeout=30, check=False)
    assert ok.returncode == 0
    down = subprocess.run([sys.executable, "-c", code.replace(":8470", ":1")],
                          capture_output=True, timeout=30, check=False)
    assert down.returncode != 0


def test_compose_file_refers_to_what_exists() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML (a moto[server] dependency) is needed")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"moto", "cachedaemon"} <= set(services)
    assert services["moto"]["image"].startswith("motoserver/moto")
    daemon = services["cachedaemon"]
    assert daemon["build"] == "."
    env = daemon["environment"]
    for name in env:
        assert name in ENV_NAMES or name.startswith("AWS_"), name
    bucket = env["CACHEDAEMON_REMOTE_URL"].removeprefix("s3://")
    assert env["CACHEDAEMON_REMOTE_S3_ENDPOINT"] == "http://moto:5000"
    # The bucket is created before the daemon starts.
    deps = daemon["depends_on"]
    (creator,) = [name for name, cond in deps.items()
                  if cond["condition"] == "service_completed_successfully"]
    assert f"moto:5000/{bucket}" in json.dumps(services[creator]["command"])
    for volume in daemon.get("volumes", []):
        name, _, target = volume.partition(":")
        assert target == env["CACHEDAEMON_STORAGE_DATA_DIR"] and name in doc["volumes"]
    for value in env.values():
        setting = next((s for s in SCHEMA if s.env == value), None)
        assert setting is None or setting.key in BY_KEY
    # The settings are valid as a whole: the CLI accepts them (a size, a URL, ...).
    check = run_cli("serve", "--help", env={k: str(v) for k, v in env.items()
                                            if k.startswith("CACHEDAEMON_")})
    assert check.returncode == 0


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
