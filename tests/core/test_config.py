"""Config: defaults <- file <- env <- flags, one clear error per bad value."""

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cachedaemon.config import BY_FLAG, SCHEMA, load_settings, render_example
from cachedaemon.errors import ConfigError
from cachedaemon.units import format_size, parse_duration, parse_size

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    s = load_settings(env={}, cpu_count=3)
    assert s.server.listen == "127.0.0.1:8470"
    assert s.server.shards == 3
    assert s.server.auth_token is None
    assert s.server.shutdown_timeout == 10.0
    assert s.server.log_format == "text"
    assert s.storage.data_dir == Path("cachedaemon-data")
    assert s.remote.url == f"file://{Path('cachedaemon-data/bucket').resolve()}"
    assert s.remote.region == "us-east-1"
    assert s.cache.max_bytes is None and s.cache.max_bytes_percent == 20
    assert s.cache.max_objects == 100_000
    assert s.cache.max_object_bytes is None
    assert s.cache.reserve_deadline == 30.0
    assert s.cache.trim_interval == 5.0
    assert s.cache.low_watermark == 0.8
    assert s.cache_dir == Path("cachedaemon-data/cache")


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[cache]\nmax_bytes = "1MiB"\nmax_objects = 7\n[server]\nlisten = "0.0.0.0:1"\n')
    env = {"CACHEDAEMON_CACHE_MAX_BYTES": "2MiB", "CACHEDAEMON_SERVER_SHUTDOWN_TIMEOUT": "500ms"}
    s = load_settings(cfg, env, {"cache.max_bytes": "3MiB"})
    assert s.cache.max_bytes == 3 * 1024**2
    assert s.sources["cache.max_bytes"] == "flag --cache-max-bytes"
    assert s.cache.max_objects == 7
    assert s.sources["cache.max_objects"] == f"file {cfg}"
    assert s.server.shutdown_timeout == 0.5
    assert s.server.listen == "0.0.0.0:1"
    s2 = load_settings(cfg, env)
    assert s2.cache.max_bytes == 2 * 1024**2


@pytest.mark.parametrize(
    ("source", "setting", "problem"),
    [
        ({"env": {"CACHEDAEMON_CACHE_MAX_BYTES": "lots"}}, "cache.max_bytes", "expected a size"),
        ({"env": {"CACHEDAEMON_CACHE_MAX_OBJECTS": "0"}}, "cache.max_objects", "at least 1"),
        ({"env": {"CACHEDAEMON_SERVER_LISTEN": "8470"}}, "server.listen", "HOST:PORT"),
        ({"env": {"CACHEDAEMON_SERVER_LISTEN": "h:99999"}}, "server.listen", "0 to 65535"),
        ({"env": {"CACHEDAEMON_SERVER_LOG_FORMAT": "xml"}}, "server.log_format", "one of text, json"),
        ({"env": {"CACHEDAEMON_CACHE_TYPO": "1"}}, "CACHEDAEMON_CACHE_TYPO", "unknown setting"),
        ({"flags": {"remote.url": "http://x"}}, "remote.url", "file:///path or s3://"),
        ({"flags": {"remote.url": "file://relative"}}, "remote.url", "absolute path"),
        ({"flags": {"cache.low_watermark": "1.5"}}, "cache.low_watermark", "at most"),
        ({"flags": {"cache.reserve_deadline": "soon"}}, "cache.reserve_deadline", "duration"),
        ({"flags": {"cache.max_bytes": "1MiB", "cache.max_object_bytes": "2MiB"}},
         "cache.max_object_bytes", "larger than"),
    ],
)
def test_bad_values_name_setting_source_and_problem(
    source: dict[str, dict[str, str]], setting: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, source.get("env", {}), source.get("flags"))
    err = info.value
    assert err.setting == setting
    assert problem in err.problem
    assert setting in str(err)
    expected = "env" if "env" in source else "flag"
    assert err.source.startswith(expected)


@pytest.mark.parametrize(
    ("text", "setting", "problem"),
    [
        ('[cache]\nmax_bytes = "x"\n', "cache.max_bytes", "expected a size"),
        ("[cache]\nmax_bytes = true\n", "cache.max_bytes", "expected a size"),
        ("[cache]\nnope = 1\n", "cache.nope", "unknown setting"),
        ("[nope]\nx = 1\n", "nope", "unknown section"),
        ("[cache\n", "--config", "not valid TOML"),
        ("cache = 3\n", "cache", "expected a [section] table"),
        ('[server]\nshards = "two"\n', "server.shards", "integer"),
    ],
)
def test_bad_file_errors(tmp_path: Path, text: str, setting: str, problem: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, {})
    assert info.value.setting == setting
    assert problem in info.value.problem
    assert str(cfg) in info.value.source


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", {})


def test_aliases_of_the_contract_exist() -> None:
    for flag in ("--config", "--data-dir", "--listen", "--shards", "--remote", "--s3-endpoint",
                 "--cache-max-bytes", "--cache-max-objects", "--max-object-bytes", "--auth-token",
                 "--server-shutdown-timeout"):
        assert flag == "--config" or flag in BY_FLAG, flag


def test_example_file_lists_every_setting_and_is_current() -> None:
    checked_in = (REPO / "config" / "cachedaemon.toml").read_text()
    assert checked_in == render_example(), "regenerate config/cachedaemon.toml from render_example()"
    for s in SCHEMA:
        assert s.env in checked_in and f"{s.name} =" in checked_in


def test_example_file_loads_to_the_defaults(tmp_path: Path) -> None:
    assert load_settings(REPO / "config" / "cachedaemon.toml", {}, cpu_count=2) == load_settings(
        None, {}, cpu_count=2
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [("123", 123), ("64KiB", 65536), ("10MiB", 10 * 1024**2), ("2GiB", 2 * 1024**3),
     ("1.5KiB", 1536), ("5MB", 5_000_000), ("0", 0), (7, 7)],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("500ms", 0.5), ("5s", 5.0), ("1m", 60.0), ("2h", 7200.0), ("3", 3.0)])
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


@given(st.text(max_size=20))
def test_size_parser_never_crashes_unexpectedly(text: str) -> None:
    try:
        assert parse_size(text) >= 0
    except ValueError:
        pass


@given(st.dictionaries(st.sampled_from([s.env for s in SCHEMA]), st.text(max_size=12), max_size=4))
@example({"CACHEDAEMON_STORAGE_DATA_DIR": "\x00"})  # found by CI: ValueError from realpath
@example({"CACHEDAEMON_STORAGE_DATA_DIR": "~nosuchuser/data"})
@example({"CACHEDAEMON_SERVER_LISTEN": "a:\u00b2"})  # str.isdigit() is true, int() refuses it
@example({"CACHEDAEMON_SERVER_S3_LISTEN": "0:\u2460"})
@example({"CACHEDAEMON_CACHE_MAX_BYTES": "1" + "0" * 400})  # float overflow
def test_any_env_value_loads_or_fails_with_config_error(env: dict[str, str]) -> None:
    try:
        load_settings(None, env, cpu_count=1)
    except ConfigError as exc:
        assert exc.setting and exc.source.startswith("env ")


@pytest.mark.parametrize("flag_value", ["a\x00b", "\x00"])
def test_a_nul_byte_in_any_string_setting_is_refused_by_name(flag_value: str) -> None:
    # No path, address, token or URL can hold a NUL: the OS refuses it later, far from the cause.
    for setting in (s for s in SCHEMA if s.kind == "str"):
        with pytest.raises(ConfigError, match="NUL") as info:
            load_settings(None, {}, {setting.key: flag_value}, cpu_count=1)
        assert info.value.setting == setting.key


def test_a_data_dir_under_an_unknown_user_home_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no such user") as info:
        load_settings(None, {"CACHEDAEMON_STORAGE_DATA_DIR": "~nosuchuser/data"}, cpu_count=1)
    assert info.value.setting == "storage.data_dir" and info.value.source.startswith("env ")


def test_a_data_dir_in_a_symlink_loop_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(ConfigError, match="loop") as info:
        load_settings(None, {"CACHEDAEMON_STORAGE_DATA_DIR": str(tmp_path / "a")}, cpu_count=1)
    assert info.value.setting == "storage.data_dir"


@pytest.mark.parametrize("text", ["\u00b2", "1\u00b2KiB", "\u0663", "1" + "0" * 400,
                                  "1" + "0" * 19, "99999999999TiB"])
def test_a_size_that_is_not_ascii_digits_or_too_large_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_are_exact_up_to_the_largest_file_a_system_can_hold() -> None:
    assert parse_size("1.5KiB") == 1536
    assert parse_size("8388607TiB") == 8388607 * 1024**4  # < 2**63
    assert parse_size(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(ValueError, match="too large"):
        parse_size(str(2**63))


@pytest.mark.parametrize("port", ["\u00b2", "\u2460", "\u0663", "+80", " 80", "080000"])
def test_a_listen_port_must_be_ascii_digits(port: str) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, {"CACHEDAEMON_SERVER_LISTEN": f"127.0.0.1:{port}"}, cpu_count=1)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 1024**3) == "3.0 GiB"


def test_s3_endpoint_settings() -> None:
    s = load_settings(env={})
    assert s.server.s3_listen is None  # off by default
    assert (s.s3.bucket_mode, s.s3.bucket) == ("single", "cachedaemon")
    assert s.s3.credentials() is None  # open, as /v1 is without a token
    s = load_settings(env={"CACHEDAEMON_REMOTE_URL": "s3://photos/team-a"},
                      flags={"server.s3_listen": "127.0.0.1:9000", "s3.bucket_mode": "prefix"})
    assert (s.server.s3_listen, s.s3.bucket_mode, s.s3.bucket) == \
        ("127.0.0.1:9000", "prefix", "photos")
    # The auth token doubles as the secret key; an explicit secret wins.
    s = load_settings(env={"CACHEDAEMON_SERVER_AUTH_TOKEN": "tok"})
    assert s.s3.credentials() == ("cachedaemon", "tok")
    s = load_settings(env={"CACHEDAEMON_SERVER_AUTH_TOKEN": "tok",
                           "CACHEDAEMON_S3_ACCESS_KEY_ID": "AK",
                           "CACHEDAEMON_S3_SECRET_ACCESS_KEY": "SK"})
    assert s.s3.credentials() == ("AK", "SK")
    for bad in ({"CACHEDAEMON_S3_BUCKET": "Not_A_Bucket"},
                {"CACHEDAEMON_SERVER_S3_LISTEN": "nope"},
                {"CACHEDAEMON_S3_BUCKET_MODE": "many"}):
        with pytest.raises(ConfigError):
            load_settings(env=bad)


def test_settings_round_trip_through_plain_data(tmp_path: Path) -> None:
    import json

    from cachedaemon.config import settings_from_dict, settings_to_dict

    settings = load_settings(None, {"CACHEDAEMON_CACHE_MAX_BYTES": "1GiB"},
                             {"storage.data_dir": str(tmp_path), "server.shards": "3"})
    data = json.loads(json.dumps(settings_to_dict(settings)))  # what a worker receives
    again = settings_from_dict(data)
    assert again == settings
    assert again.sources["cache.max_bytes"] == "env CACHEDAEMON_CACHE_MAX_BYTES"
