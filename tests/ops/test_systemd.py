"""The systemd unit (``config/cachedaemon.service``) and ``docs/deploy-systemd.md``, as far as a
machine without a running systemd allows:

- ``systemd-analyze verify`` on the unit, its ``ExecStart=``/``ExecReload=`` pointing at the real
  ``cachedaemon`` console script of this environment (systemd's tools are installed from Debian
  when missing and this runs as root);
- the daemon started the way the unit starts it: the unit's command line, working directory,
  umask and environment (no more), the configuration installed as the guide installs it
  (``root:<service group> 0640``), as an unprivileged user (uid 65534 via ``setpriv`` when the
  suite runs as root, else the suite's own user), with ``NOTIFY_SOCKET``: it sends ``READY=1``
  from its main pid (``NotifyAccess=main``), serves, passes the ``ExecReload=`` check and
  reloads on the ``ExecReload=`` SIGHUP, and on SIGTERM sends ``STOPPING=1`` and exits 0;
- the failure the guide's order of steps prevents: a configuration the service cannot read
  stops it with exit status 2, which ``RestartPreventExitStatus=2`` leaves down.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachedaemon.config import SCHEMA
from tests.support.daemon import READY_RE
from tests.support.tools import debian_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT_FILE = ROOT / "config" / "cachedaemon.service"
GUIDE = ROOT / "docs" / "deploy-systemd.md"
VENV_SCRIPT = "/opt/cachedaemon/bin/cachedaemon"
CONFIG_PATH = "/etc/cachedaemon/cachedaemon.toml"
STATE_DIR = "/var/lib/cachedaemon"
NOBODY = 65534


def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT_FILE.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            name, _, value = line.partition("=")
            out.setdefault(name, []).append(value)
    return out


def _script() -> Path:
    """This environment's ``cachedaemon`` console script: what ``pip install`` puts in a venv."""
    script = Path(sys.executable).parent / "cachedaemon"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is not installed"
    return script


# --- the unit file -----------------------------------------------------------------------------


def test_unit_runs_the_venv_script_with_the_config_file() -> None:
    unit = _unit()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == [f"{VENV_SCRIPT} serve --config {CONFIG_PATH}"]
    assert unit["ExecReload"] == [f"{VENV_SCRIPT} serve --config {CONFIG_PATH} --check-config",
                                  "/bin/kill -HUP $MAINPID"]
    for name, value in [("Restart", "on-failure"), ("User", "cachedaemon"),
                        ("Group", "cachedaemon"), ("StateDirectory", "cachedaemon"),
                        ("WorkingDirectory", STATE_DIR), ("ProtectSystem", "strict"),
                        ("ReadWritePaths", STATE_DIR), ("ProtectHome", "yes"),
                        ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                        ("KillSignal", "SIGTERM"), ("TimeoutStopSec", "30"),
                        ("RestartPreventExitStatus", "2"),
                        ("EnvironmentFile", "-/etc/cachedaemon/environment")]:
        assert unit[name] == [value], name
    # Settings live in the config file: an Environment= setting would silently beat it
    # (environment > file), and moving data_dir in the file would do nothing.
    settings = {s.env for s in SCHEMA}
    for assignment in unit.get("Environment", []):
        assert assignment.split("=", 1)[0] not in settings, assignment


def test_the_documentation_the_unit_names_is_installed_by_the_guide() -> None:
    guide = GUIDE.read_text()
    docs = [d for value in _unit()["Documentation"] for d in value.split()]
    assert docs
    for url in docs:
        assert url.startswith("file://"), url
        path = Path(url.removeprefix("file://"))
        install = next((ln for ln in guide.splitlines()
                        if ln.startswith("install ") and ln.rstrip("/").endswith(str(path.parent))
                        and re.search(rf"(^|\s|/){re.escape(path.name)}\s", ln)), None)
        assert install is not None, f"the guide installs nothing at {path}"
        source = next(a for a in install.split() if a.endswith(path.name))
        assert (ROOT / source).is_file(), source


def test_the_guide_makes_the_user_before_the_config_and_covers_both_systems() -> None:
    lines = GUIDE.read_text().splitlines()

    def first(pattern: str) -> int:
        return next(i for i, ln in enumerate(lines) if re.search(pattern, ln))

    user = first(r"^useradd --system --user-group .* cachedaemon$")
    config = first(rf"^install -m 0640 -o root -g cachedaemon config/cachedaemon\.toml {CONFIG_PATH}$")
    assert user < config
    assert first(r"^install -d -m 0750 -o root -g cachedaemon /etc/cachedaemon$") < config
    venv = first(r"^\$PYTHON -m venv /opt/cachedaemon$")
    pip = first(r"^/opt/cachedaemon/bin/pip install .*-c constraints\.txt \.$")
    assert venv < pip < first(r"^install -m 0644 config/cachedaemon\.service ")
    assert first(r"^apt-get install python3 python3-venv$") < venv
    assert first(r"^dnf install python3\.11$") < venv
    assert first(rf'^sed -i .*data_dir = "{STATE_DIR}"') > config
    # A moved data dir: the drop-in that makes it writable.
    assert first(r"ReadWritePaths=/srv/cachedaemon") > first(r'data_dir = "/srv/cachedaemon"')
    assert (ROOT / "constraints.txt").is_file()


# --- systemd-analyze verify --------------------------------------------------------------------


def _systemd_analyze() -> str:
    return debian_tool("systemd-analyze", "systemd", install_must_work=True)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    script = _script()
    text = UNIT_FILE.read_text()
    assert VENV_SCRIPT in text
    unit = tmp_path / "cachedaemon.service"
    unit.write_text(text.replace(VENV_SCRIPT, str(script)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120,
                       check=False)
    # verify exits 0 on mere warnings, so its output must be empty too.
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (0, "", "")
    # And it does look: a unit whose ExecStart does not exist fails.
    unit.write_text(text.replace(VENV_SCRIPT, str(tmp_path / "missing" / "cachedaemon")))
    bad = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode != 0 or bad.stderr.strip()


# --- starting the daemon as the unit does ------------------------------------------------------


@dataclass
class Service:
    """The unit's files laid out under a temporary root, for one unprivileged user."""

    base: Path
    uid: int
    gid: int
    listen: str

    @property
    def etc(self) -> Path:
        return self.base / "etc-cachedaemon"

    @property
    def state(self) -> Path:
        return self.base / "var-lib-cachedaemon"

    @property
    def config(self) -> Path:
        return self.etc / "cachedaemon.toml"

    def command(self, directive: str, index: int = 0, mainpid: int = 0) -> list[str]:
        """The unit's ``ExecStart=``/``ExecReload=`` (the ``index``-th line) with its paths
        mapped here and ``$MAINPID`` set, run as the service user (``setpriv``, as systemd's
        ``User=``/``Group=``) when we are root."""
        line = _unit()[directive][index]
        argv = [a.replace(VENV_SCRIPT, str(_script())).replace(CONFIG_PATH, str(self.config))
                .replace("$MAINPID", str(mainpid)) for a in shlex.split(line)]
        if os.geteuid() == 0:
            argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                    "--", *argv]
        return argv

    def env(self, notify_socket: str | None = None) -> dict[str, str]:
        """What systemd gives the service: a plain PATH, the user's HOME, nothing of ours."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": str(self.state)}
        for assignment in _unit().get("Environment", []):
            name, _, value = assignment.partition("=")
            env[name] = value.replace(STATE_DIR, str(self.state))
        if notify_socket is not None:
            env["NOTIFY_SOCKET"] = notify_socket
        return env


def _umask() -> None:
    os.umask(int(_unit()["UMask"][0], 8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _service() -> Iterator[Service]:
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop to an unprivileged user")
        uid = gid = NOBODY
        probe = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
             str(_script()), "--help"], capture_output=True, timeout=60, check=False)
        if probe.returncode != 0:
            pytest.skip(f"this environment's cachedaemon ({_script()}) cannot be run by an "
                        f"unprivileged user (uid {uid}): {probe.stderr.decode()[-300:]}")
    else:
        uid, gid = os.getuid(), os.getgid()
    # Not under pytest's tmp_path: its root is private to the user running the suite.
    base = Path(tempfile.mkdtemp(prefix="cachedaemon-unit-"))
    try:
        base.chmod(0o755)
        svc = Service(base, uid, gid, f"127.0.0.1:{_free_port()}")
        # Step 4 of the guide: /etc/cachedaemon root:cachedaemon 0750, the file 0640.
        svc.etc.mkdir(mode=0o750)
        os.chown(svc.etc, 0 if os.geteuid() == 0 else uid, gid)
        svc.etc.chmod(0o750)
        text = (ROOT / "config" / "cachedaemon.toml").read_text()
        # The guide's sed: data_dir at the state directory; and a free port for the test.
        text, n = re.subn(r"(?m)^data_dir = .*$", f'data_dir = "{svc.state}"', text)
        assert n == 1
        text, n = re.subn(r"(?m)^listen = .*$", f'listen = "{svc.listen}"', text)
        assert n == 1
        svc.config.write_text(text)
        os.chown(svc.config, 0 if os.geteuid() == 0 else uid, gid)
        svc.config.chmod(0o640)
        # StateDirectory=cachedaemon, StateDirectoryMode=0750: made by systemd for the user.
        svc.state.mkdir(mode=0o750)
        os.chown(svc.state, uid, gid)
        yield svc
    finally:
        shutil.rmtree(base, ignore_errors=True)


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket that reports each message's sender pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # as /run/systemd/notify: any service may send
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float) -> tuple[str, int]:
        """The next message and its sender's pid."""
        self.sock.settimeout(timeout)
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:struct.calcsize("iII")])[0]
        return data.decode(), pid

    def wait_for(self, state: str, timeout: float) -> int:
        end = time.monotonic() + timeout
        seen = []
        while time.monotonic() < end:
            try:
                message, pid = self.receive(max(0.1, end - time.monotonic()))
            except TimeoutError:
                break
            seen.append(message)
            if state in message.splitlines():
                return pid
        raise AssertionError(f"no {state} within {timeout}s; got {seen}")

    def close(self) -> None:
        self.sock.close()


def test_the_daemon_starts_as_the_unit_starts_it() -> None:
    with _service() as svc:
        notify = NotifySocket(svc.base / "notify")
        log = svc.base / "journal.log"
        try:
            with log.open("wb") as err:
                proc = subprocess.Popen(
                    svc.command("ExecStart"), cwd=svc.state, env=svc.env(str(notify.path)),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                    preexec_fn=_umask)
            lines: list[str] = []
            reader = threading.Thread(
                target=lambda: lines.extend(ln.decode() for ln in proc.stdout or ()), daemon=True)
            reader.start()
            try:
                ready_pid = notify.wait_for("READY=1", float(_unit()["TimeoutStartSec"][0]))
                # NotifyAccess=main: the message comes from the process systemd started.
                assert ready_pid == proc.pid
                _serves(svc)
                # ExecReload=: the check passes as the service, and changes nothing.
                reload = subprocess.run(svc.command("ExecReload"), cwd=svc.state, env=svc.env(),
                                        capture_output=True, text=True, timeout=60,
                                        preexec_fn=_umask, check=False)
                assert reload.returncode == 0, reload.stderr
                assert reload.stdout.startswith("configuration OK: listen " + svc.listen)
                # ... then its SIGHUP: the daemon reads the file again and runs on.
                hup = subprocess.run(svc.command("ExecReload", 1, proc.pid), cwd=svc.state,
                                     env=svc.env(), capture_output=True, text=True, timeout=60,
                                     check=False)
                assert hup.returncode == 0, hup.stderr
                end = time.monotonic() + 10
                while "reload: applied" not in log.read_text() and time.monotonic() < end:
                    time.sleep(0.05)
                assert "reload: applied nothing (no change)" in log.read_text()
                assert proc.poll() is None
                proc.send_signal(getattr(signal, _unit()["KillSignal"][0]))
                assert notify.wait_for("STOPPING=1", 10) == proc.pid
                assert proc.wait(float(_unit()["TimeoutStopSec"][0])) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
                reader.join(5)
        finally:
            notify.close()
        journal = log.read_text()
        assert READY_RE.search("".join(lines)), (lines, journal)
        assert "Traceback" not in journal, journal
        # Everything the daemon made belongs to the service user and, with UMask=0027, is
        # closed to others.
        made = [p for p in svc.state.rglob("*")]
        assert made and (svc.state / "cache").is_dir()
        for path in made:
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (svc.uid, svc.gid), path
            assert st.st_mode & 0o007 == 0, f"{path} is open to others: {oct(st.st_mode)}"


def _serves(svc: Service) -> None:
    import urllib.request

    base = f"http://{svc.listen}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as r:
        assert r.status == 200
    req = urllib.request.Request(f"{base}/v1/objects/unit/hello", data=b"from the unit",
                                 method="PUT")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201
    with urllib.request.urlopen(f"{base}/v1/objects/unit/hello", timeout=30) as r:
        assert r.read() == b"from the unit"


def test_a_config_the_service_cannot_read_stops_it_with_status_2() -> None:
    """The failure the guide's steps avoid (the old install comments made it): the file
    ``root:root 0640``. Exit status 2 is in ``RestartPreventExitStatus=``, so systemd would
    leave the service down; the ``ExecReload=`` check says so before a restart."""
    if os.geteuid() != 0:
        pytest.skip("only root can make a file that the service user cannot read but root can")
    with _service() as svc:
        os.chown(svc.config, 0, 0)
        assert "2" in _unit()["RestartPreventExitStatus"][0].split()
        for directive in ("ExecStart", "ExecReload"):
            r = subprocess.run(svc.command(directive), cwd=svc.state, env=svc.env(),
                               capture_output=True, text=True, timeout=60, preexec_fn=_umask,
                               check=False)
            assert r.returncode == 2, (directive, r.stderr)
            assert f"--config (from file {svc.config}): cannot read it: Permission denied" in (
                r.stderr), r.stderr
        # The guide's ownership (root:cachedaemon) makes it readable again.
        os.chown(svc.config, 0, svc.gid)
        ok = subprocess.run(svc.command("ExecReload"), cwd=svc.state, env=svc.env(),
                            capture_output=True, text=True, timeout=60, preexec_fn=_umask,
                            check=False)
        assert ok.returncode == 0, ok.stderr


def test_a_data_dir_outside_the_writable_paths_is_refused_by_the_check() -> None:
    """``ProtectSystem=strict`` makes all but ``ReadWritePaths=`` read-only; without systemd's
    sandbox here, an unwritable directory stands in for it: the ``ExecReload=`` check names the
    data directory (exit 1) instead of the service restart-looping on it."""
    with _service() as svc:
        elsewhere = svc.base / "srv-cachedaemon"
        elsewhere.mkdir(mode=0o755)  # owned by root (or by us, then made read-only)
        if os.geteuid() != 0:
            elsewhere.chmod(0o555)
        text = svc.config.read_text()
        svc.config.write_text(text.replace(f'data_dir = "{svc.state}"',
                                           f'data_dir = "{elsewhere}"'))
        r = subprocess.run(svc.command("ExecReload"), cwd=svc.state, env=svc.env(),
                           capture_output=True, text=True, timeout=60, preexec_fn=_umask,
                           check=False)
        assert r.returncode == 1, r.stderr
        assert f"data directory {elsewhere} is not usable" in r.stderr
