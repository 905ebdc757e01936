"""``lfr review``: every appearance of a listed person in recorded footage (``lfr.review``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from lfr.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    print_error,
    print_json,
    stderr,
)
from lfr.cli.plugins import load_registry
from lfr.textsafe import markup_safe, safe_text


def cmd_review(args: argparse.Namespace) -> int:
    import msgspec
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from lfr.config import load_config
    from lfr.review import ReviewError, review

    config = load_config(Path(args.config)) if args.config else None
    out = Path(args.out or time.strftime("lfr-review-%Y%m%d-%H%M%S"))
    videos = [Path(v) for v in args.videos]
    for video in videos:
        if not video.is_file():
            raise UserError(f"{video}: no such video file")
    registry = load_registry()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=stderr, transient=True,
                  disable=args.json) as bar:
        task = bar.add_task(f"reviewing {len(videos)} file(s)", total=None)
        try:
            report = review(
                videos, Path(args.watchlist), out, registry, config=config,
                data_dir=Path(args.data_dir) if args.data_dir else None,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
        except ReviewError as exc:
            raise UserError(str(exc)) from None
    code = EXIT_FAILED if report.failures else EXIT_OK
    if args.json:
        error = {"error": "; ".join(report.failures), "exit_code": code} if code else {}
        print_json({**msgspec.to_builtins(report), **error})
        return code
    table = Table(title=f"{len(report.appearances)} appearances", title_justify="left")
    for column in ("file", "person", "first", "last", "frames", "best score"):
        table.add_column(column)
    for a in report.appearances:
        table.add_row(safe_text(Path(a.file).name), safe_text(f"{a.name} ({a.person_id})"),
                      f"{a.first_s:.2f} s", f"{a.last_s:.2f} s",
                      f"{a.first_frame}-{a.last_frame}", f"{a.best_score:.3f}")
    stderr.print(table)
    rate = report.frames / report.seconds if report.seconds else 0.0
    stderr.print(f"frames {report.frames} ({rate:.1f}/s), faces {report.faces}, alerts "
                 f"{report.alerts}, {report.seconds:.1f} s; contact sheet "
                 f"{markup_safe(report.contact_sheet)}; records in {markup_safe(report.data_dir)}")
    for failure in report.failures:
        print_error(failure)
    return code


def register(sub: Any) -> None:
    review = sub.add_parser(
        "review", help="find every appearance of listed people in recorded video files "
        "(every frame, as fast as the machine allows; alerts audited as in a live run)")
    review.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    review.add_argument("--watchlist", required=True, metavar="BUNDLE",
                        help="watchlist bundle (lfr watchlist build)")
    review.add_argument("--config", help="deployment config (TOML) for the models, threshold, "
                        "tracking, quality and audit settings; its cameras, watchlist, notifiers "
                        "and data_dir are not used (default: lfr's defaults)")
    review.add_argument("--out", help="output folder: contact sheet, crops, review.json "
                        "(default: ./lfr-review-<date>-<time>)")
    review.add_argument("--data-dir", help="the review's records: outbox and audit log "
                        "(default: OUT/data)")
    review.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    review.set_defaults(func=cmd_review)
