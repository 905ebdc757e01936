"""The ``lfr`` command line: the parser and ``main()``; each command group is a module here.

Commands parse their arguments, call the library and print (``lfr.cli.output``). Human output and
progress go to stderr; ``--json`` prints one JSON object on stdout and nothing else, a failure
included (``{"error": ..., "exit_code": ...}``, see ``lfr.cli.output``). Exit codes: 0 done, 1
failed while running, 2 bad usage, config or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rich.logging import RichHandler

from lfr import __version__
from lfr.cli import audit, cluster, plugins, report, review, run, users, watchlist, web
from lfr.cli import eval as evaluation
from lfr.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UserError,
    json_error,
    print_error,
    stderr,
)

log = logging.getLogger("lfr.cli")

# In the order `lfr --help` lists them; each module's register(subparsers) adds its commands,
# which set func(args) -> exit code.
COMMAND_GROUPS = (run, review, watchlist, plugins, audit, report, evaluation, users, web,
                  cluster)


class _Parser(argparse.ArgumentParser):
    """argparse's parser (usage and message on stderr, exit 2), plus the JSON error object on
    stdout when the command line asked for ``--json``. Subcommands' parsers are of this class."""

    json_requested = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_requested:
            json_error(f"{self.prog}: {message}", EXIT_USAGE)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lfr", description="Live facial recognition with "
                     "audited alerts: cameras, watchlist matching, adjudication.")
    parser.add_argument("--version", action="version", version=f"lfr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


# Faces, alert crops, embeddings and the audit trail are nobody else's business: every folder lfr
# creates is 0700 and every file 0600 from its first write.
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    previous_umask = os.umask(PRIVATE_UMASK)
    try:
        return _main(argv)
    finally:
        os.umask(previous_umask)  # in-process callers (tests, embedding) get theirs back


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_requested = "--json" in argv
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=stderr, show_path=False)])
    from lfr.audit import AuditError
    from lfr.keys import KeyFileError
    from lfr.plugins import BackendError, ConfigError
    from lfr.sealed import SealError
    from lfr.vision.models import ModelError
    from lfr.watchlist import WatchlistError

    try:
        return int(args.func(args))
    except (UserError, ConfigError, ModelError, WatchlistError, AuditError, KeyFileError,
            SealError) as exc:
        return _failed(str(exc), EXIT_USAGE, as_json)
    except KeyboardInterrupt:
        return _failed("interrupted", EXIT_INTERRUPTED, as_json)
    except BackendError as exc:  # names the backend and its plugin: the traceback is for -v
        log.debug("lfr %s failed", args.command, exc_info=exc)
        return _failed(str(exc), EXIT_FAILED, as_json)
    except Exception as exc:  # a bug: the traceback on stderr, one line (and JSON) after it
        log.error("lfr %s failed", args.command, exc_info=exc)
        return _failed(f"{type(exc).__name__}: {exc}", EXIT_FAILED, as_json)


def _failed(message: str, exit_code: int, as_json: bool) -> int:
    print_error(message)
    if as_json:
        json_error(message, exit_code)
    return exit_code
