"""``lfr audit verify``: check a deployment's hash-chained audit log, named directly
(``--data-dir``) or through its config (``--config``)."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from lfr.cli.options import add_location, location_data_dir
from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, stderr


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from lfr.audit import LOG_NAME, verify

    data_dir = location_data_dir(args)
    log_file = data_dir / LOG_NAME
    if not log_file.is_file():
        raise UserError(f"{data_dir}: no audit log ({LOG_NAME}) here")
    result = verify(log_file)
    if args.json:
        print_json({"path": str(log_file), **msgspec.to_builtins(result)})
    elif result.ok:
        stderr.print(
            f"{log_file}: [green]verified[/], {result.records} records",
            highlight=False,
            soft_wrap=True,
        )
    else:
        where = []
        if result.first_bad_seq is not None:
            where.append(f"record seq {result.first_bad_seq}")
        if result.first_bad_line is not None:
            where.append(f"line {result.first_bad_line}")
        stderr.print(
            f"{log_file}: [red]FAILS verification[/] at {', '.join(where) or 'the head file'}: "
            f"{result.reason} ({result.records} good records before it)",
            highlight=False,
            soft_wrap=True,
        )
    return EXIT_OK if result.ok else EXIT_FAILED


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check a deployment's hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser(
        "verify",
        help="verify the chain and head; exit 1 naming the first bad record (seq, line, reason)",
    )
    add_location(verify, required=True)
    verify.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    verify.set_defaults(func=cmd_audit_verify)
