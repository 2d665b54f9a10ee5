"""Run the real ``cachedaemon serve`` process for end-to-end tests.

``start_daemon(data_dir, ...)`` is a context manager that starts
``python -m cachedaemon serve --listen 127.0.0.1:0 --data-dir DATA_DIR ...`` in a subprocess,
waits for its ``cachedaemon listening on http://HOST:PORT`` line (port 0 means the daemon picks
a free port and prints it), yields a :class:`DaemonProcess`, and always kills the process on
exit. ``run_cli(*args)`` runs a command that is expected to exit (bad config, port in use, the
client commands) and returns its :class:`subprocess.CompletedProcess`.

Inherited ``CACHEDAEMON_*`` environment variables are dropped so a developer's shell cannot change
what a test sees; pass ``env=`` to set some. With ``s3_endpoint`` the dummy AWS credentials moto
accepts are set. stderr (the logs) goes to a file next to the data directory, readable with
:meth:`DaemonProcess.logs`, and printed in the error when the daemon fails to start.

Used by the server tests (``tests/server``) and the CLI tests; test-only, synchronous (a reader
thread collects stdout), safe to use from async tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(r"cachedaemon listening on (http://(\S+):(\d+))")
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def daemon_env(env: Mapping[str, str] | None = None, *, s3: bool = False) -> dict[str, str]:
    """The environment for a daemon or CLI subprocess: ours minus ``CACHEDAEMON_*``, plus ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("CACHEDAEMON_")}
    out["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    out["PYTHONUNBUFFERED"] = "1"
    if s3:
        out.update(DUMMY_AWS)
    out.update(env or {})
    return out


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 30,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m cachedaemon ARGS`` to completion; stdout/stderr captured as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "cachedaemon", *args],
        env=daemon_env(env, s3=True),
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


class DaemonStartError(RuntimeError):
    """The daemon exited or stayed silent instead of printing its listening line."""


class DaemonProcess:
    """One running ``cachedaemon serve`` subprocess."""

    def __init__(
        self,
        data_dir: str | Path,
        *extra_args: str,
        env: Mapping[str, str] | None = None,
        shards: int = 1,
        remote: str | None = None,
        s3_endpoint: str | None = None,
        listen: str = "127.0.0.1:0",
        cwd: str | Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.shards = shards
        self._preexec_fn = preexec_fn
        args = ["serve", "--listen", listen, "--data-dir", str(self.data_dir)]
        args += ["--shards", str(shards)]
        if remote is not None:
            args += ["--remote", remote]
        if s3_endpoint is not None:
            args += ["--s3-endpoint", s3_endpoint]
        args += list(extra_args)
        self.args = args
        self._env = daemon_env(env, s3=s3_endpoint is not None or (remote or "").startswith("s3:"))
        self._cwd = cwd
        fd, log_name = tempfile.mkstemp(prefix="cachedaemon-test-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.host = ""
        self.port = 0
        self.stdout_lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> DaemonProcess:
        """Start the process and wait for its listening line (raises DaemonStartError)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cachedaemon", *self.args],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self._cwd,
                preexec_fn=self._preexec_fn,
            )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        end = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(1)
                if self._ready.is_set():
                    break
                raise DaemonStartError(
                    f"daemon exited with {self.proc.returncode} before it was ready\n"
                    f"stdout: {''.join(self.stdout_lines)}\nstderr: {self.logs()}"
                )
            if time.monotonic() > end:
                self.kill()
                raise DaemonStartError(
                    f"daemon not ready after {timeout}s\nstderr: {self.logs()}"
                )
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.stdout_lines.append(line)
            m = READY_RE.search(line)
            if m and not self._ready.is_set():
                self.url, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
                self._ready.set()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the exit, return the exit status."""
        return self.signal(signal.SIGTERM, timeout)

    def signal(self, sig: int, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> int:
        """SIGKILL (no cleanup at all, as a crash), wait, return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(30)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Kill if still running and drop the log file."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.kill()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._reader is not None:
            self._reader.join(5)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@contextlib.contextmanager
def start_daemon(
    data_dir: str | Path,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    shards: int = 1,
    remote: str | None = None,
    s3_endpoint: str | None = None,
    timeout: float = 20,
    listen: str = "127.0.0.1:0",
    cwd: str | Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[DaemonProcess]:
    """Start ``cachedaemon serve`` and yield it once ready; always kill it afterwards.
    ``preexec_fn`` runs in the child before it starts (e.g. to lower its descriptor limit)."""
    daemon = DaemonProcess(
        data_dir, *extra_args, env=env, shards=shards, remote=remote, s3_endpoint=s3_endpoint,
        listen=listen, cwd=cwd, preexec_fn=preexec_fn,
    )
    try:
        daemon.start(timeout)
        yield daemon
    finally:
        daemon.close()
