"""``lfr audit verify``: check a deployment's hash-chained audit log, named directly
(``--data-dir``) or through its config (``--config``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
from rich.markup import escape

from lfr.cli.options import add_location, location_data_dir
from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, stderr


def public_key(args: argparse.Namespace) -> Any:
    """The key the seals are checked with: ``--public-key``, else None (the data directory's
    audit.pub)."""
    from lfr.keys import KeyFileError, load_public_key

    if not getattr(args, "public_key", None):
        return None
    try:
        return load_public_key(Path(args.public_key))
    except KeyFileError as exc:
        raise UserError(str(exc)) from None


def verified_log(args: argparse.Namespace) -> tuple[Path, Any]:
    """(audit.jsonl, VerifyResult) of the data directory the arguments name."""
    from lfr.audit import LOG_NAME, OUTBOX_NAME, verify

    data_dir = location_data_dir(args)
    log_file = data_dir / LOG_NAME
    # An emptied data directory with alerts still in its outbox is verified (and fails), not
    # waved through as "no log here".
    if not log_file.is_file() and not (data_dir / OUTBOX_NAME).is_file():
        raise UserError(f"{data_dir}: no audit log ({LOG_NAME}) here")
    return log_file, verify(log_file, public_key(args))


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from lfr.keys import PUBLIC_KEY_NAME

    log_file, result = verified_log(args)
    key_source = args.public_key or str(log_file.with_name(PUBLIC_KEY_NAME))
    if args.json:
        print_json({"path": str(log_file), "public_key_file": key_source,
                    **msgspec.to_builtins(result)})
    elif result.ok:
        stderr.print(
            f"{log_file}: [green]verified[/], {result.records} records, {result.seals} seals "
            f"(public key {result.public_key or 'none'} from {key_source})",
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
            f"{escape(result.reason)} ({result.records} good records before it)",
            highlight=False,
            soft_wrap=True,
        )
    for warning in result.warnings:
        stderr.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return EXIT_OK if result.ok else EXIT_FAILED


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check a deployment's hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser(
        "verify",
        help="verify the chain and head; exit 1 naming the first bad record (seq, line, reason)",
    )
    add_location(verify, required=True)
    verify.add_argument("--public-key", metavar="FILE",
                        help="the deployment's public key (PEM) to check the seals with; "
                        "default: audit.pub in the data directory")
    verify.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    verify.set_defaults(func=cmd_audit_verify)
