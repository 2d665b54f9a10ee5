"""The ``cachedaemon`` command line: ``serve`` runs the daemon; the other subcommands are a client.

``cachedaemon serve [--config FILE] [--<section>-<name> VALUE ...]`` builds
:class:`~cachedaemon.config.Settings` (flag > env > file > default) and hands them to
:func:`cachedaemon.server.main.run`. Every setting of :data:`cachedaemon.config.SCHEMA` has a
flag (``--cache-max-bytes``) plus the short aliases of ``shared/API.md`` (``--listen``).

Exit statuses (``shared/API.md`` "Command line client"): 0 success, 1 a refused or not-found
request or an unreachable daemon, 2 a usage error or invalid configuration.

Runs on the main thread of a short-lived process; the client subcommands use the synchronous
:class:`~cachedaemon.client.Client`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from cachedaemon.cli.progress import ProgressBar
from cachedaemon.client import DEFAULT_URL, Client, ObjectMeta
from cachedaemon.client.wire import b64
from cachedaemon.config import SCHEMA, Setting, load_settings
from cachedaemon.errors import (
    CacheDaemonError,
    ConfigError,
    DaemonUnreachable,
    DeadlineExceeded,
    NotFound,
)
from cachedaemon.units import format_duration, format_size

PROG = "cachedaemon"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _die(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


# --- serve -------------------------------------------------------------------------------------


#: Settings whose value is a secret: a flag shows in ``ps`` and the shell's history, so the help
#: steers them to the environment or the configuration file.
SECRET_SETTINGS = frozenset({"server.auth_token"})


def default_text(setting: Setting) -> str:
    """A setting's default as a person writes it (``10s``, ``16MiB``, ``false``); a computed
    default by its description. Used by ``serve --help`` and kept equal to ``docs/api.md``."""
    value = setting.default
    if value is None:
        return setting.default_doc or "unset"
    if setting.kind == "bool":
        return "true" if value else "false"
    if setting.kind == "duration":
        return format_duration(value)
    if setting.kind == "size":
        for unit, mult in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value and value % mult == 0:
                return f"{value // mult}{unit}"
        return str(value)
    return str(value)


def _setting_help(setting: Setting) -> str:
    text = f"{setting.help} Default: {default_text(setting)}; env {setting.env}."
    if setting.key in SECRET_SETTINGS:
        text += (f" A secret: prefer {setting.env} or the config file, since a flag shows in"
                 " ps.")
    # argparse expands %-formats in help.
    return text.replace("%", "%%")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One option per setting, its long flag and aliases sharing a dest. Flags not given are
    absent from the namespace (``SUPPRESS``), so only what the user typed overrides env/file."""
    group = parser.add_argument_group(
        "settings (each also CACHEDAEMON_<SECTION>_<NAME> in the environment, or <name> in the"
        " [<section>] of the --config file; a flag wins over the environment, which wins over"
        " the file)")
    for setting in SCHEMA:
        names = [setting.flag, *(a for a in setting.aliases if a != setting.flag)]
        dest = f"setting:{setting.key}"
        if setting.kind == "bool":
            group.add_argument(*names, dest=dest, action="store_const", const="true",
                               default=argparse.SUPPRESS, help=_setting_help(setting))
        else:
            metavar = {"size": "SIZE", "duration": "DURATION", "int": "N", "float": "NUMBER"}.get(
                setting.kind, "VALUE")
            if setting.kind == "choice":
                metavar = "|".join(setting.choices)
            group.add_argument(*names, dest=dest, metavar=metavar,
                               default=argparse.SUPPRESS, help=_setting_help(setting))


def _setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name[len("setting:"):]: value
        for name, value in vars(args).items()
        if name.startswith("setting:")
    }


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="TOML configuration file (default: none)")
    parser.add_argument("--check-config", action="store_true", default=argparse.SUPPRESS,
                        help="check the settings and the data directory, print them and exit"
                             " (0 fine, 2 invalid settings, 1 unusable data directory); starts"
                             " nothing. The systemd unit's ExecReload runs it before its SIGHUP.")
    _add_setting_flags(parser)


def _serve_parser() -> argparse.ArgumentParser:
    """``serve``'s arguments alone: how ``healthcheck --pid`` reads a running daemon's."""
    parser = _Parser(prog=f"{PROG} serve", add_help=False)
    _add_serve_arguments(parser)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, os.environ, _setting_flags(args))
    except ConfigError as exc:
        _die(str(exc), EXIT_USAGE)
    try:
        # Lazy: the client subcommands must not pay for importing the server.
        from cachedaemon.server.main import (  # type: ignore[import-not-found,unused-ignore]
            StartupError,
            check_data_dir,
            run,
        )
    except ImportError as exc:
        _die(f"the server is not available in this build: {exc}", EXIT_FAILED)
    if getattr(args, "check_config", False):
        try:
            check_data_dir(settings.storage.data_dir)
        except StartupError as exc:
            _die(str(exc), EXIT_FAILED)
        _print(f"configuration OK: listen {settings.server.listen}, data_dir "
               f"{settings.storage.data_dir}, remote {settings.remote.url}; a running daemon"
               " applies the cache limits and the log level on SIGHUP (systemctl reload), the"
               " rest at a restart")
        return EXIT_OK
    status: int = run(settings)
    return status


# --- client commands ---------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("CACHEDAEMON_URL") or DEFAULT_URL
    token = args.token if args.token is not None else os.environ.get("CACHEDAEMON_AUTH_TOKEN")
    return Client(url, token=token or None)


def _out() -> BinaryIO:
    return sys.stdout.buffer


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


def cmd_put(args: argparse.Namespace) -> int:
    source = args.file
    with _client(args) as client:
        if source == "-":
            data: Any = sys.stdin.buffer
            total = _stdin_size()
        else:
            path = Path(source)
            try:
                total = path.stat().st_size
            except OSError as exc:
                _die(f"cannot read {source}: {exc.strerror or exc}", EXIT_FAILED)
            if not path.is_file():
                _die(f"{source} is not a regular file", EXIT_FAILED)
            data = path
        bar = ProgressBar(f"put {args.key}", total)
        try:
            info = client.put(
                args.key, data, if_none_match=args.if_none_match, if_match=args.if_match,
                deadline_ms=args.deadline_ms, progress=bar.update)
        finally:
            bar.finish()
    if args.verbose:
        _print(f"{info.key}\t{info.size}\t{info.etag}")
    return EXIT_OK


def _stdin_size() -> int | None:
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def cmd_get(args: argparse.Namespace) -> int:
    byte_range = args.range
    with _client(args) as client:
        bar = ProgressBar(f"get {args.key}", None)

        def on_meta(meta: ObjectMeta) -> None:
            bar.set_total(meta.content_length)

        try:
            if args.output and args.output != "-":
                client.get_to_file(args.key, args.output, byte_range=byte_range,
                                   progress=bar.update, on_meta=on_meta)
            else:
                client.get_into(args.key, _out(), byte_range=byte_range,
                                progress=bar.update, on_meta=on_meta)
        finally:
            bar.finish()
    return EXIT_OK


def cmd_head(args: argparse.Namespace) -> int:
    with _client(args) as client:
        meta = client.head(args.key)
    _print(f"key: {meta.key}")
    _print(f"size: {meta.size}")
    _print(f"etag: {meta.etag or ''}")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for key in args.keys:
            try:
                client.delete(key)
            except NotFound:
                pass  # removing what is not there succeeds, as the API's 204 does
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for info in client.list(args.prefix or None):
            if args.long:
                _print(f"{info.size}\t{info.etag}\t{info.key}")
            else:
                _print(info.key)
    return EXIT_OK


_SIZE_FIELDS = {"bytes_used", "bytes_reserved", "max_bytes", "bytes_freed"}


def _human(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in _SIZE_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return f"{format_size(value)} ({value})" if value >= 1024 else f"{value} B"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def cmd_stat(args: argparse.Namespace) -> int:
    if args.mrc:
        return _stat_mrc(args)
    with _client(args) as client:
        stats = client.cache_stats()
    if args.json:
        _print(json.dumps(dict(stats.raw), indent=2))
    else:
        for name, value in stats.raw.items():
            _print(f"{name}: {_human(name, value)}")
    return EXIT_OK


def _show(args: argparse.Namespace, fetch: Callable[[Client], Any],
          lines: Callable[[Any], Iterable[str]]) -> int:
    """Fetch one answer from the daemon and print it: its JSON with ``--json``, else the
    lines ``lines`` makes of it."""
    with _client(args) as client:
        answer = fetch(client)
    if args.json:
        _print(json.dumps(dict(answer.raw), indent=2))
    else:
        for line in lines(answer):
            _print(line)
    return EXIT_OK


def _stat_mrc(args: argparse.Namespace) -> int:
    from cachedaemon.cli.insight import render_mrc

    return _show(args, lambda client: client.mrc(), render_mrc)


def cmd_explain(args: argparse.Namespace) -> int:
    from cachedaemon.cli.insight import format_explain

    return _show(args, lambda client: client.explain(args.key), format_explain)


def cmd_reservations(args: argparse.Namespace) -> int:
    from cachedaemon.cli.insight import format_reservations

    return _show(args, lambda client: client.reservations(), format_reservations)


def cmd_warm(args: argparse.Namespace) -> int:
    import time

    with _client(args) as client:
        status = client.warm(args.source, max_bytes=args.bytes, timeout_s=args.timeout)
        if not args.no_wait:
            bar = ProgressBar(f"warm from {status.source or args.source}", None, enabled=None)
            shown = 0
            try:
                while status.running:
                    bar.set_total(status.bytes_total or None)
                    bar.update(status.bytes_done - shown)
                    shown = status.bytes_done
                    time.sleep(0.25)
                    status = client.warm_status()
                bar.update(status.bytes_done - shown)
            finally:
                bar.finish()
    if args.json:
        _print(json.dumps(dict(status.raw), indent=2))
        return EXIT_FAILED if status.state == "failed" else EXIT_OK
    raw = status.raw
    _print(f"warm-up {status.state}: {raw.get('keys_done', 0)} of {raw.get('keys_total', 0)} "
           f"objects, {format_size(status.bytes_done)} of {format_size(status.bytes_total)} from "
           f"{status.source or args.source} ({raw.get('keys_skipped', 0)} already cached or "
           f"written meanwhile, {raw.get('keys_failed', 0)} failed)"
           + (f": {status.error}" if status.error else ""))
    return EXIT_FAILED if status.state == "failed" else EXIT_OK


def cmd_hotset(args: argparse.Namespace) -> int:
    import time

    with _client(args) as client:
        found = [client.publish_hotset()] if args.publish else client.hotsets()
    if args.json:
        _print(json.dumps([dict(h.raw) for h in found], indent=2))
        return EXIT_OK
    for h in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.published))
        _print(f"{h.node}\t{when}\t{h.entries} objects\t{format_size(h.bytes)}")
    return EXIT_OK


def _size_arg(text: str) -> int:
    from cachedaemon.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text: str) -> float:
    from cachedaemon.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_trim(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.trim()
    if args.json:
        _print(json.dumps({"bytes_freed": result.bytes_freed,
                           "objects_freed": result.objects_freed}))
    else:
        _print(f"bytes_freed: {_human('bytes_freed', result.bytes_freed)}")
        _print(f"objects_freed: {result.objects_freed}")
    return EXIT_OK


def _arg_bytes(text: str) -> bytes:
    # Arguments the shell could not decode arrive with surrogates; give back the raw bytes.
    return os.fsencode(text)


def cmd_kv_put(args: argparse.Namespace) -> int:
    value = sys.stdin.buffer.read() if args.value == "-" and args.stdin else _arg_bytes(args.value)
    with _client(args) as client:
        client.kv_put(args.domain, _arg_bytes(args.key), value)
    return EXIT_OK


def cmd_kv_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        value = client.kv_get(args.domain, _arg_bytes(args.key))
    out = _out()
    out.write(value)
    out.flush()
    return EXIT_OK


def cmd_kv_rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            client.kv_delete(args.domain, _arg_bytes(args.key))
        except NotFound:
            pass
    return EXIT_OK


def cmd_kv_scan(args: argparse.Namespace) -> int:
    def opt(value: str | None) -> bytes | None:
        return None if value is None else _arg_bytes(value)

    with _client(args) as client:
        items = client.kv_scan(
            args.domain, start=opt(args.start), end=opt(args.end), prefix=opt(args.prefix),
            reverse=args.reverse,
            page_size=min(args.limit, 1000) if args.limit is not None else None,
        )
        for count, (key, value) in enumerate(items):
            if args.limit is not None and count >= args.limit:
                break
            _print(json.dumps({"key": b64(key), "value": b64(value)}))
    return EXIT_OK


def cmd_kv_domains(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for name in client.domains():
            _print(name)
    return EXIT_OK


def cmd_kv_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.domain_info(args.domain)
    if args.json:
        _print(json.dumps(dict(info.raw), indent=2))
    else:
        for name, value in info.raw.items():
            _print(f"{name}: {_human(name, value)}")
    return EXIT_OK


def cmd_kv_flush(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.flush(args.domain)
    return EXIT_OK


def cmd_kv_compact(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.compact(args.domain)
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from cachedaemon.cli.healthcheck import HealthcheckError, run

    try:
        run(_serve_parser(), pid=args.pid, config=args.config, timeout_s=args.timeout)
    except HealthcheckError as exc:
        _die(f"unhealthy: {exc}", EXIT_FAILED)
    return EXIT_OK


def cmd_fsck(args: argparse.Namespace) -> int:
    from cachedaemon.cli.fsck import check_data_dir

    report = check_data_dir(Path(args.data_dir))
    for line in report.lines():
        _print(line)
    return EXIT_OK if report.clean else EXIT_FAILED


# --- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2. A subcommand's parser refuses unknown
    arguments itself, so ``serve --bogus`` prints ``serve``'s usage, not the top-level one
    (plain argparse hands a subparser's leftovers up to the top-level parser)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.prog != PROG:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _die(message, EXIT_USAGE)


def _byte_range(text: str) -> str:
    spec = text.removeprefix("bytes=")
    first, sep, last = spec.partition("-")
    if not sep or not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or (
            first == "" and last == ""):
        raise argparse.ArgumentTypeError(f"expected A-B, A- or -N, got {text!r}")
    return f"bytes={spec}"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


TOKEN_HELP = ("bearer token (default: env CACHEDAEMON_AUTH_TOKEN, else none); prefer the"
              " environment: a flag shows in ps")


def build_parser() -> argparse.ArgumentParser:
    # --url/--token go before the subcommand; also accepted after it (SUPPRESS keeps the
    # earlier value when the later parser does not see them).
    conn = _Parser(add_help=False)
    conn.add_argument("--url", default=argparse.SUPPRESS,
                      help=f"daemon URL (env CACHEDAEMON_URL, default {DEFAULT_URL})")
    conn.add_argument("--token", default=argparse.SUPPRESS, help=TOKEN_HELP)

    parser = _Parser(prog=PROG, description="cachedaemon: a local-disk cache in front of a "
                     "bucket, and an LSM metastore. `serve` runs the daemon; the rest talk to it.")
    parser.add_argument("--url", default=None,
                        help=f"daemon URL (env CACHEDAEMON_URL, default {DEFAULT_URL})")
    parser.add_argument("--token", default=None, help=TOKEN_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    serve = sub.add_parser(
        "serve", help="run the daemon",
        usage=f"{PROG} serve [-h] [--config FILE] [--check-config] [--SECTION-NAME VALUE ...]",
        description="Run the daemon until SIGTERM or SIGINT. Every setting below can also be"
                    " given in the environment or the --config file; docs/api.md lists them.")
    _add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    p = sub.add_parser("put", parents=[conn], help="store an object from a file or stdin")
    p.add_argument("key")
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-",
                   help="file to upload; - or nothing for stdin")
    p.add_argument("--if-none-match", action="store_true", help="create only (If-None-Match: *)")
    p.add_argument("--if-match", metavar="ETAG", help="replace only this version")
    p.add_argument("--deadline-ms", type=_positive_int, metavar="MS",
                   help="how long the daemon may wait for cache space")
    p.add_argument("-v", "--verbose", action="store_true", help="print key, size and etag")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", parents=[conn], help="write an object's bytes to stdout or a file")
    p.add_argument("key")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--range", type=_byte_range, metavar="A-B",
                   help="only these bytes (A-B inclusive, A-, or -N for the last N)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("head", parents=[conn], help="show an object's size and etag")
    p.add_argument("key")
    p.set_defaults(func=cmd_head)

    p = sub.add_parser("rm", parents=[conn], help="delete objects (missing ones are fine)")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("ls", parents=[conn], help="list keys, one per line")
    p.add_argument("prefix", nargs="?", default=None, metavar="PREFIX")
    p.add_argument("-l", "--long", action="store_true", help="also size and etag")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("stat", parents=[conn], help="cache figures")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--mrc", action="store_true",
                   help="the miss-ratio curve instead: the hit ratio the cache would have at"
                        " other sizes, as a chart")
    p.set_defaults(func=cmd_stat)

    p = sub.add_parser("explain", parents=[conn], help="why a key is, or is not, cached")
    p.add_argument("key")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("reservations", parents=[conn],
                       help="who holds cache space, and who waits for it")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_reservations)

    p = sub.add_parser("warm", parents=[conn],
                       help="fill the cache from a hot set another node published")
    p.add_argument("--from", dest="source", default="any", metavar="NODE-ID|any",
                   help="whose hot set (default: any, the newest of another node)")
    p.add_argument("--bytes", type=_size_arg, default=None, metavar="SIZE",
                   help="fetch at most this much (default: cache.warm_bytes)")
    p.add_argument("--timeout", type=_duration_arg, default=None, metavar="DURATION",
                   help="stop after this long (default: cache.warm_timeout)")
    p.add_argument("--no-wait", action="store_true",
                   help="start it and return (default: show progress until it ends)")
    p.add_argument("--json", action="store_true", help="the final status as JSON")
    p.set_defaults(func=cmd_warm)

    p = sub.add_parser("hotset", parents=[conn],
                       help="list the hot sets published in the bucket, or publish this one")
    p.add_argument("--publish", action="store_true", help="publish this daemon's hot set now")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_hotset)

    p = sub.add_parser("trim", parents=[conn], help="trim the cache now")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_trim)

    kv = sub.add_parser("kv", help="key-value domains of the metastore")
    kv_sub = kv.add_subparsers(dest="kv_command", metavar="COMMAND", parser_class=_Parser)
    kv_sub.required = True
    p = kv_sub.add_parser("put", parents=[conn], help="set KEY to VALUE")
    p.add_argument("domain")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--stdin", action="store_true", help="with VALUE -, read the value from stdin")
    p.set_defaults(func=cmd_kv_put)
    p = kv_sub.add_parser("get", parents=[conn], help="write KEY's value to stdout")
    p.add_argument("domain")
    p.add_argument("key")
    p.set_defaults(func=cmd_kv_get)
    p = kv_sub.add_parser("rm", parents=[conn], help="delete KEY (a missing key is fine)")
    p.add_argument("domain")
    p.add_argument("key")
    p.set_defaults(func=cmd_kv_rm)
    p = kv_sub.add_parser("scan", parents=[conn], help="JSON lines of base64 key and value")
    p.add_argument("domain")
    p.add_argument("--prefix", help="only keys starting with this")
    p.add_argument("--start", help="from this key (inclusive)")
    p.add_argument("--end", help="to this key (exclusive)")
    p.add_argument("--reverse", action="store_true", help="descending key order")
    p.add_argument("--limit", type=_positive_int, help="at most this many items")
    p.set_defaults(func=cmd_kv_scan)
    p = kv_sub.add_parser("domains", parents=[conn], help="list domains")
    p.set_defaults(func=cmd_kv_domains)
    p = kv_sub.add_parser("info", parents=[conn], help="a domain's epoch, seqnos and levels")
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_kv_info)
    p = kv_sub.add_parser("flush", parents=[conn], help="flush a domain's memtable")
    p.add_argument("domain")
    p.set_defaults(func=cmd_kv_flush)
    p = kv_sub.add_parser("compact", parents=[conn], help="compact a domain fully")
    p.add_argument("domain")
    p.set_defaults(func=cmd_kv_compact)

    p = sub.add_parser(
        "healthcheck", help="exit 0 if the daemon answers /healthz where it is configured to listen",
        description="Probe GET /healthz at the daemon's server.listen (a wildcard address on"
                    " loopback). With --pid, the settings are those of that running `serve`"
                    " process (its flags, environment and --config, read from /proc; a"
                    " container's HEALTHCHECK uses --pid 1); without it, this process's"
                    " environment and --config. Exit 0 if healthy, else 1 with the reason.")
    p.add_argument("--pid", type=_positive_int, metavar="PID",
                   help="take the settings of this cachedaemon serve process (default: none)")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TOML configuration file, without --pid (default: none)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="how long to wait for the answer (default: 2)")
    p.set_defaults(func=cmd_healthcheck)

    p = sub.add_parser("fsck", help="check a stopped daemon's data directory (offline)")
    p.add_argument("--data-dir", required=True, metavar="DIR")
    p.set_defaults(func=cmd_fsck)
    return parser


def _describe(exc: CacheDaemonError) -> str:
    if isinstance(exc, DaemonUnreachable | DeadlineExceeded) or exc.code in exc.message:
        return exc.message
    return f"{exc.message} ({exc.code})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except CacheDaemonError as exc:
        _die(_describe(exc), EXIT_FAILED)
    except BrokenPipeError:
        # The reader went away (`cachedaemon get k | head`): stop quietly, as cat does.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:  # a local file (put's FILE, get's -o) could not be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        _die(f"{where}{exc.strerror or exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
