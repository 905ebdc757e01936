"""``lfr report``: the deployment report from its audit log, named directly (``--data-dir``) or
through its config (``--config``)."""

from __future__ import annotations

import argparse
from typing import Any

from lfr.cli.options import add_location, location_data_dir
from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, stderr


def cmd_report(args: argparse.Namespace) -> int:
    from lfr.report import render_report, report_for

    try:
        report = report_for(location_data_dir(args))
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json(report)
    else:
        stderr.print(render_report(report))
    if not report.audit.ok:
        stderr.print(
            f"[red]the audit log fails verification ({report.audit.reason}): the report covers "
            f"the {report.audit.records} records before the first bad one[/]",
            highlight=False,
        )
        return EXIT_FAILED
    return EXIT_OK


def register(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="the deployment report from the audit log: location, times, watchlist, threshold, "
        "faces, alerts, decisions, false alerts per 1,000 faces, camera uptime",
    )
    add_location(report, required=True)
    report.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    report.set_defaults(func=cmd_report)
