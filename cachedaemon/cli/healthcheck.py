"""``cachedaemon healthcheck``: is the daemon answering ``/healthz`` where it is configured to listen?

A container's HEALTHCHECK (or any probe that runs beside the daemon) must follow the daemon's
``server.listen``, which may come from a flag, the environment or the ``--config`` file. With
``--pid PID`` (Docker: ``--pid 1``) the check reads that process's command line and environment
from ``/proc`` and resolves the settings exactly as ``cachedaemon serve`` did (flag > env > file >
default; a relative ``--config`` against the process's working directory); without it, this
process's own environment and ``--config`` are used. A wildcard address (``0.0.0.0``, ``::``)
is checked on loopback.

Exit 0 when ``GET /healthz`` answers 200 within the timeout; otherwise one line on stderr saying
why and exit 1 (as Docker expects). Runs on the main thread of a short-lived process.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachedaemon.config import load_settings
from cachedaemon.errors import ConfigError

WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}


class HealthcheckError(Exception):
    """The daemon is not healthy, or where it listens cannot be told; the message says why."""


@dataclass(frozen=True)
class ServeCommand:
    """What a running ``cachedaemon serve`` was started with."""

    argv: list[str]  # the arguments after ``serve``
    env: dict[str, str]
    cwd: Path


def read_process(pid: int, proc: Path = Path("/proc")) -> ServeCommand:
    """The ``serve`` arguments, environment and working directory of process ``pid``."""
    base = proc / str(pid)
    try:
        argv = (base / "cmdline").read_bytes().split(b"\0")
        environ = (base / "environ").read_bytes().split(b"\0")
        cwd = Path(os.readlink(base / "cwd"))
    except OSError as exc:
        raise HealthcheckError(f"cannot read process {pid}: {exc.strerror or exc}") from exc
    args = [os.fsdecode(a) for a in argv if a]
    if "serve" not in args:
        raise HealthcheckError(f"process {pid} is not `cachedaemon serve`: {' '.join(args)}")
    env: dict[str, str] = {}
    for item in environ:
        name, sep, value = os.fsdecode(item).partition("=")
        if sep:
            env[name] = value
    return ServeCommand(args[args.index("serve") + 1:], env, cwd)


def listen_address(serve_parser: argparse.ArgumentParser, command: ServeCommand
                   ) -> tuple[str, int]:
    """The (host, port) to probe: the daemon's ``server.listen``, a wildcard made loopback."""
    try:
        args, _ = serve_parser.parse_known_args(command.argv)
    except SystemExit as exc:  # argparse already printed why
        raise HealthcheckError("cannot parse the daemon's command line") from exc
    flags: dict[str, Any] = {
        name[len("setting:"):]: value for name, value in vars(args).items()
        if name.startswith("setting:")
    }
    config = getattr(args, "config", None)
    if config is not None and not os.path.isabs(config):
        config = str(command.cwd / config)
    try:
        settings = load_settings(config, command.env, flags, cpu_count=1)
    except ConfigError as exc:
        raise HealthcheckError(f"the daemon's settings do not load here: {exc}") from exc
    host, port = settings.server.host, settings.server.port
    if port == 0:
        raise HealthcheckError("server.listen has port 0 (a port picked at start): set a port")
    return WILDCARDS.get(host, host), port


def probe(host: str, port: int, timeout_s: float) -> None:
    """``GET /healthz``; raises HealthcheckError unless it answers 200."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise HealthcheckError(f"{url} answered {resp.status}")
    except urllib.error.HTTPError as exc:
        raise HealthcheckError(f"{url} answered {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HealthcheckError(f"{url}: {reason}") from exc


def run(serve_parser: argparse.ArgumentParser, *, pid: int | None, config: str | None,
        timeout_s: float, env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Resolve where the daemon listens and probe it; returns the (host, port) checked."""
    if pid is not None:
        command = read_process(pid)
    else:
        argv = ["--config", config] if config else []
        command = ServeCommand(argv, dict(os.environ if env is None else env), Path.cwd())
    host, port = listen_address(serve_parser, command)
    probe(host, port, timeout_s)
    return host, port
