"""Operations commands: ``lfr audit verify``, ``lfr report``, ``lfr watchlist destroy``.

Each reads a deployment's data directory, named directly (``--data-dir``) or through its config
(``--config``). Human output goes to stderr; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
from rich.markup import escape

from lfr.cli import EXIT_FAILED, EXIT_OK, UserError, _print_json, stderr


def _config(args: argparse.Namespace) -> Any:
    from lfr.config import load_config

    return load_config(Path(args.config)) if getattr(args, "config", None) else None


def _data_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    return Path(_config(args).resolved_data_dir())


def _add_location(parser: argparse.ArgumentParser, required: bool) -> None:
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--config", help="the deployment's config (TOML): its data directory")
    where.add_argument("--data-dir", help="the deployment's data directory")


# -- audit verify -------------------------------------------------------------------------------


def _public_key(args: argparse.Namespace) -> Any:
    """The key the seals are checked with: ``--public-key``, else None (the data directory's
    audit.pub)."""
    from lfr.keys import KeyFileError, load_public_key

    if not getattr(args, "public_key", None):
        return None
    try:
        return load_public_key(Path(args.public_key))
    except KeyFileError as exc:
        raise UserError(str(exc)) from None


def _verified_log(args: argparse.Namespace) -> tuple[Path, Any]:
    """(audit.jsonl, VerifyResult) of the data directory the arguments name."""
    from lfr.audit import LOG_NAME, OUTBOX_NAME, verify

    data_dir = _data_dir(args)
    log_file = data_dir / LOG_NAME
    # An emptied data directory with alerts still in its outbox is verified (and fails), not
    # waved through as "no log here".
    if not log_file.is_file() and not (data_dir / OUTBOX_NAME).is_file():
        raise UserError(f"{data_dir}: no audit log ({LOG_NAME}) here")
    return log_file, verify(log_file, _public_key(args))


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from lfr.keys import PUBLIC_KEY_NAME

    log_file, result = _verified_log(args)
    key_source = args.public_key or str(log_file.with_name(PUBLIC_KEY_NAME))
    if args.json:
        _print_json({"path": str(log_file), "public_key_file": key_source,
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


# -- report -------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from lfr.report import render_report, report_for

    log_file, result = _verified_log(args)
    if not result.ok:
        # A report from a log that does not verify would publish figures nobody can stand by.
        if args.json:
            _print_json({"path": str(log_file), "audit": msgspec.to_builtins(result)})
        stderr.print(
            f"[red]no report: the audit log {log_file} fails verification "
            f"({escape(result.reason)}); "
            f"run lfr audit verify for details[/]",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_FAILED
    report = report_for(log_file.parent, _public_key(args))
    if args.json:
        _print_json(report)
    else:
        stderr.print(render_report(report))
    return EXIT_OK


# -- watchlist destroy --------------------------------------------------------------------------


def cmd_watchlist_destroy(args: argparse.Namespace) -> int:
    from lfr.audit import AuditError, AuditLog, Kind
    from lfr.watchlist import WatchlistError, destroy_bundle

    bundle = Path(args.bundle)
    config = _config(args)
    audit: AuditLog | None = None
    if config is not None or args.data_dir:
        data_dir = Path(args.data_dir) if args.data_dir else config.resolved_data_dir()
        try:
            # Open the log first: if it cannot record the destruction, nothing is deleted.
            options = config.audit_log_options() if config is not None else {}
            audit = AuditLog(data_dir, **options)
        except AuditError as exc:
            raise UserError(f"{exc}; nothing deleted") from None
    record: dict[str, Any] = {"path": str(bundle.resolve())}
    try:
        try:
            record["digest"] = digest = destroy_bundle(bundle)
        except WatchlistError as exc:
            raise UserError(str(exc)) from None
        if audit is not None:
            from lfr.config import Config

            operator = (config or Config(name="cli")).operator_name(args.operator)
            audit.append(Kind.WATCHLIST_DESTROYED, {**record, "operator": operator})
            record["audited_in"] = str(audit.path)
    finally:
        if audit is not None:
            audit.close()
    if args.json:
        _print_json({"destroyed": record})
    else:
        stderr.print(f"destroyed watchlist {bundle} (sha256 {digest})", highlight=False)
        if audit is None:
            stderr.print(
                "[yellow]not audited: pass --config or --data-dir to record it in a "
                "deployment's audit log[/]"
            )
    return EXIT_OK


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check a deployment's hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser(
        "verify",
        help="verify the chain and head; exit 1 naming the first bad record (seq, line, reason)",
    )
    _add_location(verify, required=True)
    verify.add_argument("--public-key", metavar="FILE",
                        help="the deployment's public key (PEM) to check the seals with; "
                        "default: audit.pub in the data directory")
    verify.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    verify.set_defaults(func=cmd_audit_verify)

    report = sub.add_parser(
        "report",
        help="the deployment report from the audit log: location, times, watchlist, threshold, "
        "faces, alerts, decisions, false alerts per 1,000 faces, camera uptime",
    )
    _add_location(report, required=True)
    report.add_argument("--public-key", metavar="FILE",
                        help="the deployment's public key (PEM); default: audit.pub beside the log")
    report.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    report.set_defaults(func=cmd_report)

    if "watchlist" in sub.choices:
        destroy = sub.choices["watchlist"].get_default("subcommands").add_parser(
            "destroy",
            help="delete a bundle (expired ones too) and record that in the audit log",
        )
        destroy.add_argument("bundle", help="bundle folder to delete")
        _add_location(destroy, required=False)
        destroy.add_argument("--operator", help="who destroys it (audit log); default: OS user")
        destroy.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        destroy.set_defaults(func=cmd_watchlist_destroy)
