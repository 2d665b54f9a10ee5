"""The command line's usage and help (in-process, no daemon): a subcommand's usage error shows
that subcommand's usage, ``--help`` shows every setting's default and environment variable, and
the help steers secrets away from flags (a flag shows in ``ps``)."""

from __future__ import annotations

import pytest

from cachedaemon.cli import SECRET_SETTINGS, default_text, main
from cachedaemon.config import BY_KEY, SCHEMA


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    out, err = capsys.readouterr()
    code = stop.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize(("argv", "usage"), [
    (["serve", "--bogus"], "usage: cachedaemon serve "),
    (["serve", "--listen", "127.0.0.1:1", "extra"], "usage: cachedaemon serve "),
    (["ls", "--bogus"], "usage: cachedaemon ls "),
    (["kv", "put", "--bogus", "d", "k", "v"], "usage: cachedaemon kv put "),
    (["kv", "scan", "d", "--nope"], "usage: cachedaemon kv scan "),
    (["fsck", "--data-dir", "x", "--bogus"], "usage: cachedaemon fsck "),
])
def test_a_subcommand_error_prints_that_subcommands_usage(
        capsys: pytest.CaptureFixture[str], argv: list[str], usage: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(usage), err
    assert "unrecognized arguments" in err and argv[-1] in err
    # One usage, one error line: not the top-level usage after it.
    assert err.count("usage:") == 1


def test_top_level_errors_keep_the_top_level_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--bogus", "stat")
    assert code == 2 and err.startswith("usage: cachedaemon [-h]")
    code, _, err = _run(capsys, "frobnicate")
    assert code == 2 and err.startswith("usage: cachedaemon [-h]")


def test_serve_help_shows_every_settings_default_and_env(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = _run(capsys, "serve", "--help")
    assert code == 0
    text = " ".join(out.split())
    for setting in SCHEMA:
        assert f"Default: {default_text(setting)}; env {setting.env}." in text, setting.key
    assert "Default: 127.0.0.1:8470;" in text
    assert "Default: 10s; env CACHEDAEMON_SERVER_SHUTDOWN_TIMEOUT." in text
    assert "Default: 16MiB; env CACHEDAEMON_METASTORE_MEMTABLE_BYTES." in text
    assert "Default: number of cores; env CACHEDAEMON_SERVER_SHARDS." in text


def test_help_steers_secrets_to_the_environment(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert "server.auth_token" in SECRET_SETTINGS and set(BY_KEY) >= SECRET_SETTINGS
    _, out, _ = _run(capsys, "serve", "--help")
    text = " ".join(out.split())
    for key in SECRET_SETTINGS:
        env = BY_KEY[key].env
        assert f"A secret: prefer {env} or the config file, since a flag shows in ps." in text
    for argv in (["--help"], ["get", "--help"]):
        _, out, _ = _run(capsys, *argv)
        text = " ".join(out.split())
        assert "env CACHEDAEMON_AUTH_TOKEN" in text and "a flag shows in ps" in text
        assert "default http://127.0.0.1:8470" in text


@pytest.mark.parametrize(("key", "text"), [
    ("server.listen", "127.0.0.1:8470"), ("server.shards", "number of cores"),
    ("server.auth_token", "unset"), ("server.read_only", "false"),
    ("server.shutdown_timeout", "10s"), ("cache.max_objects", "100000"),
    ("cache.low_watermark", "0.8"), ("remote.multipart_threshold", "16MiB"),
    ("cache.min_free_bytes", "2 % of the data disk, at most 5GiB"), ("metastore.file_deletion_delay", "1h"),
    ("remote.url", "file://<data_dir>/bucket"),
])
def test_default_text(key: str, text: str) -> None:
    assert default_text(BY_KEY[key]) == text
