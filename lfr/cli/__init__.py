"""The ``lfr`` command line: the parser and ``main()``; each command group is a module here.

Commands parse their arguments, call the library and print (``lfr.cli.output``). Human output and
progress go to stderr; ``--json`` prints one JSON object on stdout and nothing else. Exit codes: 0
done, 1 failed while running, 2 bad usage, config or input.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from rich.logging import RichHandler

from lfr import __version__
from lfr.cli import audit, plugins, report, run, watchlist
from lfr.cli import eval as evaluation
from lfr.cli.output import EXIT_INTERRUPTED, EXIT_USAGE, UserError, print_error, stderr

# In the order `lfr --help` lists them; each module's register(subparsers) adds its commands,
# which set func(args) -> exit code.
COMMAND_GROUPS = (run, watchlist, plugins, audit, report, evaluation)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfr", description="Live facial recognition with "
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=stderr, show_path=False)])
    from lfr.audit import AuditError
    from lfr.plugins import ConfigError
    from lfr.vision.models import ModelError
    from lfr.watchlist import WatchlistError

    try:
        return int(args.func(args))
    except (UserError, ConfigError, ModelError, WatchlistError, AuditError) as exc:
        print_error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
