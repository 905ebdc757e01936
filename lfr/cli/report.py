"""``lfr report``: the deployment report from its audit log, named directly (``--data-dir``) or
through its config (``--config``)."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
from rich.markup import escape

from lfr.cli.audit import public_key, verified_log
from lfr.cli.options import add_location
from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, stderr


def cmd_report(args: argparse.Namespace) -> int:
    from lfr.report import render_report, report_for

    if args.nats:  # a deployment spread over nodes (lfr.cluster)
        from lfr.cli.cluster import cmd_cluster_report

        return cmd_cluster_report(args)
    if not (args.config or args.data_dir):
        raise UserError("report: give --config or --data-dir (or --nats URL --deployment NAME "
                        "for a deployment spread over nodes)")
    log_file, result = verified_log(args)
    if not result.ok:
        # A report from a log that does not verify would publish figures nobody can stand by.
        if args.json:
            print_json({"path": str(log_file), "audit": msgspec.to_builtins(result)})
        stderr.print(
            f"[red]no report: the audit log {log_file} fails verification "
            f"({escape(result.reason)}); run lfr audit verify for details[/]",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_FAILED
    report = report_for(log_file.parent, public_key(args))
    if args.json:
        print_json(report)
    else:
        stderr.print(render_report(report))
    return EXIT_OK


def register(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="the deployment report from the audit log: location, times, watchlist, threshold, "
        "faces, alerts, decisions, false alerts per 1,000 faces, camera uptime",
    )
    add_location(report, required=False)
    report.add_argument("--public-key", metavar="FILE",
                        help="the deployment's public key (PEM); default: audit.pub beside the log")
    report.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    report.set_defaults(func=cmd_report)
    from lfr.cli.cluster import add_report_options

    add_report_options(report)
