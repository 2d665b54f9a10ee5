"""The container packaging: ``Dockerfile``, ``.dockerignore``, ``constraints.txt``,
``docker-compose.yml`` and ``cachedaemon healthcheck``.

No Docker engine runs here, so nothing is built: the files are parsed and held to their
properties (a pinned base image, a fixed uid/gid, dependencies from the constraints file in a
layer of their own, one image build, pinned images, a restarting moto that the daemon waits
for, ephemeral volumes on both sides), and the commands the engine would run are run for real:
the image's HEALTHCHECK against real daemons configured by flag, environment and config file,
and moto's healthcheck (which makes the bucket) against the test session's moto server.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from cachedaemon.cli import _serve_parser
from cachedaemon.cli.healthcheck import HealthcheckError, ServeCommand, listen_address
from cachedaemon.config import SCHEMA
from tests.conftest import bare_s3_client
from tests.support.daemon import READY_RE, daemon_env, run_cli

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = {s.env for s in SCHEMA}
UID = GID = 10001
PINNED_IMAGE = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}$")

# --- Dockerfile --------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _get(name: str) -> list[str]:
    return [arg for n, arg in _dockerfile() if n == name]


def _healthcheck_argv() -> list[str]:
    (health,) = _get("HEALTHCHECK")
    argv = json.loads(health[health.index("CMD") + 3:].strip())
    assert isinstance(argv, list)
    return argv


def test_the_base_image_is_pinned_by_version_and_digest() -> None:
    (frm,) = _get("FROM")
    args = dict(a.split("=", 1) for a in _get("ARG") if "=" in a)
    image = args[frm.strip("${}")] if frm.startswith("${") else frm
    assert PINNED_IMAGE.match(image), image
    assert image.startswith("python:3.11."), image  # the Python the project is tested on


def test_the_user_has_a_fixed_uid_and_gid() -> None:
    run = " ".join(_get("RUN"))
    assert f"groupadd --system --gid {GID} cachedaemon" in run
    assert f"useradd --system --uid {UID} --gid {GID}" in run
    assert f"install -d -o {UID} -g {GID} -m 0750 /var/lib/cachedaemon" in run
    assert _get("USER") == [f"{UID}:{GID}"]
    assert json.loads(_get("VOLUME")[0]) == ["/var/lib/cachedaemon"]
    doc = (ROOT / "docs" / "deploy-docker.md").read_text()
    assert f"chown -R {UID}:{GID}" in doc  # how to prepare a bind mount


def test_dependencies_come_from_the_constraints_file_in_their_own_layer() -> None:
    instr = _dockerfile()
    steps = [f"{n} {a}" for n, a in instr if n in ("COPY", "RUN")]
    copy_constraints = next(i for i, s in enumerate(steps) if s.startswith("COPY constraints.txt"))
    assert steps[copy_constraints].split()[1:-1] == ["constraints.txt"]  # nothing else copied
    install_deps = steps[copy_constraints + 1]
    assert re.search(r"pip install .*-r /tmp/constraints\.txt", install_deps), install_deps
    copy_code = next(i for i, s in enumerate(steps) if s.startswith("COPY cachedaemon"))
    assert copy_constraints < copy_code  # a code change keeps the dependency layer
    install_code = next(s for s in steps[copy_code:] if "pip install" in s)
    assert "--no-deps" in install_code and "pip check" in install_code


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not pinned with =="
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_constraints_pin_every_runtime_dependency() -> None:
    """Every requirement of pyproject.toml, and theirs (as installed here), is pinned, and the
    pins satisfy pyproject.toml: a dependency added without ``scripts/lock`` fails here."""
    pins = _pins()
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in doc["project"]["dependencies"]]
    env = {"extra": "", "sys_platform": "linux", "platform_system": "Linux"}
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = _canonical(req.name)
        assert name in pins, f"{req.name} (needed by cachedaemon) is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {req}")
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(metadata.PackageNotFoundError):
            todo += [Requirement(r) for r in metadata.requires(req.name) or ()]
    assert seen <= set(pins)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a path is also excluded when
    a parent directory is (and not re-included)."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if fnmatch.fnmatchcase(sub, pat) or (
                    pat.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pat[3:])):
                result = not negate
                break
    return result


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for arg in _get("COPY"):
        for src in arg.split()[:-1]:
            assert (ROOT / src).exists(), src
            assert not _ignored(src, patterns), f"{src} is copied but .dockerignore drops it"
    assert not _ignored("cachedaemon/server/main.py", patterns)
    for junk in (".git", "tests/conftest.py", ".venv-test/bin/python", "cachedaemon-data/x",
                 "cachedaemon/__pycache__/x.pyc", "bench/serving.py"):
        assert _ignored(junk, patterns), junk


def test_environment_and_entrypoint() -> None:
    settings = dict(re.findall(r"(CACHEDAEMON_\w+)=(\S+)", " ".join(_get("ENV"))))
    assert set(settings) <= ENV_NAMES
    assert settings["CACHEDAEMON_SERVER_LISTEN"] == "0.0.0.0:8470"
    assert settings["CACHEDAEMON_STORAGE_DATA_DIR"] == "/var/lib/cachedaemon"
    assert _get("EXPOSE") == ["8470"]
    assert json.loads(_get("ENTRYPOINT")[0]) == ["cachedaemon"]
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["scripts"]["cachedaemon"] == "cachedaemon.cli:main"
    assert _healthcheck_argv() == ["cachedaemon", "healthcheck", "--pid", "1"]


# --- the HEALTHCHECK against real daemons ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serve(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m cachedaemon serve ARGS`` configured only by what the test gives (no --listen
    added, unlike tests.support.daemon), until its listening line."""
    proc = subprocess.Popen([sys.executable, "-m", "cachedaemon", "serve", *args],
                            env=daemon_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if READY_RE.search(line.decode()):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(30), "the daemon did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def _healthcheck(pid: int) -> subprocess.CompletedProcess[bytes]:
    """The image's HEALTHCHECK command, with the daemon's pid for 1 (the container's daemon)."""
    argv = _healthcheck_argv()
    assert argv[0] == "cachedaemon" and argv[-2:] == ["--pid", "1"]
    return run_cli(*argv[1:-1], str(pid))


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_the_healthcheck_follows_the_configured_listen_address(tmp_path: Path, how: str) -> None:
    port = _free_port()
    listen = f"127.0.0.1:{port}"
    args, env = ["--data-dir", str(tmp_path / "data"), "--shards", "1"], {}
    if how == "flag":
        args += ["--listen", listen]
    elif how == "env":
        env["CACHEDAEMON_SERVER_LISTEN"] = listen
    else:  # a relative --config, against the daemon's working directory
        (tmp_path / "cachedaemon.toml").write_text(f'[server]\nlisten = "{listen}"\n')
        args += ["--config", "cachedaemon.toml"]
    with _serve(args, env, cwd=tmp_path) as proc:
        ok = _healthcheck(proc.pid)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b""
    down = _healthcheck(proc.pid)  # the process is gone
    assert down.returncode == 1 and b"unhealthy: cannot read process" in down.stderr


def test_the_healthcheck_fails_when_nothing_answers_there(tmp_path: Path) -> None:
    port = _free_port()
    args = ["--data-dir", str(tmp_path / "data"), "--shards", "1", "--listen",
            f"127.0.0.1:{port}"]
    with _serve(args, {}, cwd=tmp_path) as proc:
        # Another address than the daemon's: the check must not pass by accident.
        other = run_cli("healthcheck", env={"CACHEDAEMON_SERVER_LISTEN": f"127.0.0.1:{port + 1}"
                                            if port < 65535 else "127.0.0.1:1"})
        assert other.returncode == 1 and b"unhealthy:" in other.stderr
        same = run_cli("healthcheck", env={"CACHEDAEMON_SERVER_LISTEN": f"127.0.0.1:{port}"})
        assert same.returncode == 0, same.stderr
        assert proc.poll() is None


@pytest.mark.parametrize(("listen", "host"), [
    ("0.0.0.0:8470", "127.0.0.1"), ("[::]:8470", "::1"), ("10.1.2.3:8470", "10.1.2.3"),
    ("127.0.0.1:8470", "127.0.0.1"),
])
def test_a_wildcard_listen_address_is_checked_on_loopback(listen: str, host: str) -> None:
    command = ServeCommand(["--listen", listen], {}, Path("/"))
    assert listen_address(_serve_parser(), command) == (host, 8470)


def test_a_port_picked_at_start_cannot_be_checked() -> None:
    with pytest.raises(HealthcheckError, match="port 0"):
        listen_address(_serve_parser(), ServeCommand([], {"CACHEDAEMON_SERVER_LISTEN":
                                                          "127.0.0.1:0"}, Path("/")))


# --- docker-compose.yml ------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (a moto[server] dependency) is needed")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_builds_one_image_and_pins_the_others() -> None:
    services = _compose()["services"]
    built = [name for name, svc in services.items() if "build" in svc]
    assert built == ["cachedaemon"]
    for name, svc in services.items():
        if name not in built:
            assert PINNED_IMAGE.match(svc["image"]), f"{name}: {svc['image']} is not pinned"
            assert svc["image"] != "cachedaemon:dev"


def test_compose_moto_restarts_and_the_daemon_waits_for_it() -> None:
    services = _compose()["services"]
    moto, daemon = services["moto"], services["cachedaemon"]
    assert moto["restart"] in ("always", "unless-stopped")
    assert daemon["restart"] in ("always", "unless-stopped")
    assert daemon["depends_on"] == {"moto": {"condition": "service_healthy", "restart": True}}
    env = daemon["environment"]
    assert env["CACHEDAEMON_REMOTE_S3_ENDPOINT"] == "http://moto:5000"
    for name in env:
        assert name in ENV_NAMES or name.startswith("AWS_"), name
    # The settings are valid as a whole: the CLI accepts them (a size, a URL, ...).
    check = run_cli("serve", "--help", env={k: str(v) for k, v in env.items()
                                            if k.startswith("CACHEDAEMON_")})
    assert check.returncode == 0, check.stderr


@pytest.mark.s3
def test_compose_moto_healthcheck_makes_the_bucket_the_daemon_uses(moto_endpoint: str) -> None:
    """moto is healthy only once the daemon's bucket exists (its check makes it), so waiting
    for a healthy moto is waiting for the bucket, after a moto restart too."""
    services = _compose()["services"]
    bucket = services["cachedaemon"]["environment"]["CACHEDAEMON_REMOTE_URL"].removeprefix("s3://")
    test = services["moto"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3]
    assert f"'http://127.0.0.1:5000/{bucket}'" in code
    fresh = f"compose-{uuid.uuid4().hex[:12]}"
    code = code.replace(f"'http://127.0.0.1:5000/{bucket}'", f"'{moto_endpoint}/{fresh}'")
    s3 = bare_s3_client(moto_endpoint)
    try:
        for _ in range(2):  # makes it, then finds it
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                               check=False)
            assert r.returncode == 0, r.stderr
            s3.head_bucket(Bucket=fresh)
    finally:
        s3.close()
    down = subprocess.run([sys.executable, "-c", code.replace(moto_endpoint,
                                                              "http://127.0.0.1:1")],
                          capture_output=True, timeout=30, check=False)
    assert down.returncode != 0


def test_compose_volumes_are_ephemeral_on_both_sides() -> None:
    """moto keeps buckets in memory, so the daemon's data is a tmpfs: ``down``/``up`` never
    leaves a cache beside a bucket that lost what it cached."""
    doc = _compose()
    services = doc["services"]
    assert "volumes" not in doc and "volumes" not in services["moto"]
    daemon = services["cachedaemon"]
    assert "volumes" not in daemon
    (mount,) = daemon["tmpfs"]
    target, _, options = mount.partition(":")
    assert target == daemon["environment"]["CACHEDAEMON_STORAGE_DATA_DIR"]
    opts = dict(o.partition("=")[::2] for o in options.split(","))
    assert (opts["uid"], opts["gid"]) == (str(UID), str(GID))
    # The cache fits in the tmpfs, with room for the logs and staging.
    size = opts["size"].lower()
    assert size.endswith("m")
    assert int(size[:-1]) * 1024**2 > 1.5 * 256 * 1024**2
    assert daemon["environment"]["CACHEDAEMON_CACHE_MAX_BYTES"] == "256MiB"
    text = (ROOT / "docs" / "deploy-docker.md").read_text().lower()
    assert "both ephemeral" in text and "both persistent" in text

