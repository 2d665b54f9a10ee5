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
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from cachedaemon.config import SCHEMA, load_settings
from cachedaemon.errors import ConfigError

PROG = "cachedaemon"
DEFAULT_URL = "http://127.0.0.1:8470"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _die(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


# --- serve -------------------------------------------------------------------------------------


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One option per setting, its long flag and aliases sharing a dest. Flags not given are
    absent from the namespace (``SUPPRESS``), so only what the user typed overrides env/file."""
    group = parser.add_argument_group("settings (also CACHEDAEMON_<SECTION>_<NAME> or the file)")
    for setting in SCHEMA:
        names = [setting.flag, *(a for a in setting.aliases if a != setting.flag)]
        dest = f"setting:{setting.key}"
        if setting.kind == "bool":
            group.add_argument(*names, dest=dest, action="store_const", const="true",
                               default=argparse.SUPPRESS, help=setting.help)
        else:
            metavar = {"size": "SIZE", "duration": "DURATION", "int": "N"}.get(
                setting.kind, "VALUE")
            if setting.kind == "choice":
                metavar = "|".join(setting.choices)
            group.add_argument(*names, dest=dest, metavar=metavar,
                               default=argparse.SUPPRESS, help=setting.help)


def _setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name[len("setting:"):]: value
        for name, value in vars(args).items()
        if name.startswith("setting:")
    }


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, os.environ, _setting_flags(args))
    except ConfigError as exc:
        _die(str(exc), EXIT_USAGE)
    try:
        # Lazy: the client subcommands must not pay for importing the server.
        from cachedaemon.server.main import run  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        _die(f"the server is not available in this build: {exc}", EXIT_FAILED)
    status: int = run(settings)
    return status


# --- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _die(message, EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="cachedaemon: a local-disk cache in front of a "
                     "bucket, and an LSM metastore. `serve` runs the daemon; the rest talk to it.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", metavar="FILE", default=None,
                       help="TOML configuration file")
    _add_setting_flags(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
