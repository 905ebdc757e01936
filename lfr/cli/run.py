"""``lfr run`` (a deployment from its config) and ``lfr demo`` (the demo data through one)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.markup import escape
from rich.table import Table

from lfr.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    print_error,
    print_json,
    print_warning,
    stderr,
)
from lfr.cli.plugins import load_registry
from lfr.cli.watchlist import enrol, outcome_table, prepare_watchlist
from lfr.textsafe import safe_text

if TYPE_CHECKING:
    from lfr.config import Config


def _run_deployment(config: Any, *, offline: bool, once: bool, photos: Sequence[Path] = (),
                    as_json: bool, services: Sequence[Any] = (), registry: Any | None = None,
                    analyzer: Any | None = None) -> tuple[list[Any], Any]:
    """Run it; ``registry`` and ``analyzer`` when the command has loaded them already."""
    import anyio

    from lfr.deployment import Deployment

    deployment = Deployment(config, registry or load_registry(), offline=offline, once=once,
                            photos=photos, analyzer=analyzer)
    with deployment.alerts.record() as raised:  # every alert of this run, in order
        summary = anyio.run(lambda: deployment.run(services=services))
    return raised.items, summary


def run_exit_code(summary: Any) -> int:
    """1 when a stage failed for good or every camera failed (``summary.failures``), else 0.
    Alerts left undelivered are not a failure: they are kept and sent at the next start."""
    return EXIT_FAILED if summary.failures else EXIT_OK


def print_run(alerts: list[Any], summary: Any, as_json: bool) -> int:
    """A deployment's alerts and summary: one JSON object (with ``error`` and ``exit_code`` when
    the run failed), or a table and totals on stderr. Returns the exit code."""
    code = run_exit_code(summary)
    error = "; ".join(summary.failures)
    if as_json:
        print_json({"alerts": [a.summary() for a in alerts],
                    "summary": msgspec.to_builtins(summary),
                    **({"error": error, "exit_code": code} if code else {})})
        return code
    table = Table(title=f"{len(alerts)} alerts", title_justify="left")
    for column in ("time", "camera", "person", "score", "frame"):
        table.add_column(column)
    for a in alerts:
        table.add_row(a.time, safe_text(a.camera), safe_text(f"{a.name} ({a.person_id})"),
                      f"{a.score:.3f}", str(a.frame_index))
    stderr.print(table)
    stderr.print(
        f"frames {summary.frames}, faces {summary.faces}, alerts {summary.alerts}, "
        f"dropped frames {summary.dropped_frames}, restarts {summary.restarts}, "
        f"{summary.seconds:.1f} s; records in {summary.data_dir}")
    for name in summary.failed_actors:
        stderr.print(f"[red]failed: {escape(name)}[/]")
    for report in summary.stuck:  # the watchdog restarted these
        stderr.print(f"[red]{escape(report)}[/]")
    for warning in summary.photo_errors:
        print_warning(warning)
    if summary.undelivered:
        print_warning(f"{summary.undelivered} alerts not delivered yet: kept in the outbox, "
                      "sent at the next start")
    for failure in summary.failures:
        print_error(failure)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from lfr.config import load_config

    if args.log_format == "json":
        from lfr.monitoring import use_json_logs

        use_json_logs()
    config = load_config(Path(args.config))
    user = None
    if args.dashboard or args.user:
        # The dashboard's decisions are its user's: authenticated before anything starts.
        from lfr.cli.users import login
        from lfr.users import UserStore

        user = login(UserStore(config.users_file()), args.user, args.password_stdin)
        if args.dashboard and not user.may("decide"):
            raise UserError(f"{user.name} is an {user.role}: the dashboard is for operators and "
                            "supervisors (auditors read: lfr report, lfr audit)")
        config = msgspec.structs.replace(config, operator=user.name)
    services: list[Any] = []
    if args.web or config.web.enabled:
        # The settings the viewer runs with (--web applied) are the ones the audit log records:
        # in the config record and, once it listens, in its web_settings record.
        config = msgspec.structs.replace(config, web=config.effective_web(args.web))
        services.append(_web_service(config).run)
    registry = load_registry()
    analyzer = prepare_watchlist(config, args.json, registry)
    if args.metrics or config.metrics.enabled:
        from lfr.monitoring import MetricsService

        services.append(MetricsService(args.metrics or config.metrics.listen).run)
    if args.dashboard:
        from lfr.dashboard import DashboardService

        assert user is not None  # authenticated above
        services.append(DashboardService(user).run)
    alerts, summary = _run_deployment(config, offline=False, once=args.once, as_json=args.json,
                                      services=services, registry=registry, analyzer=analyzer)
    return print_run(alerts, summary, args.json)


def _web_service(config: Config) -> Any:
    """The web viewer for ``config.web`` (effective already), refused before the deployment
    starts when its settings are: plain HTTP beyond loopback, a certificate that does not load,
    no user who could log in (outside the demo mode)."""
    from lfr.users import UsersFileError, UserStore
    from lfr.web import WebService

    store = UserStore(config.users_file())
    try:
        service = WebService(config.web, users=store)
        if not config.web.demo_token and not any(
                not u.disabled for u in store.users().values()):
            raise UserError(f"web viewer: no active user in {store.path} to log in: add one "
                            "(lfr users add NAME --role operator), or set web.demo_token = true "
                            "for a demo with one shared token")
    except (ValueError, UsersFileError) as exc:
        raise UserError(f"{config.source_file or '<config>'}: {exc}") from None
    return service


def _demo_folder(args: argparse.Namespace) -> Path:
    from lfr.demo import DEMO_DATA_ENV, demo_data_dir, is_demo_folder

    how = f"(it needs people/, and video/ or scenes/); pass --data DIR or set {DEMO_DATA_ENV}"
    if not args.data:
        found = demo_data_dir()
        if found is None:
            raise UserError(f"no demo folder: ${DEMO_DATA_ENV}, or shared/data/demo beside the "
                            f"repository {how}")
        return found
    data = Path(args.data)
    if not is_demo_folder(data):
        raise UserError(f"{data}: not a demo folder {how}")
    return data


def cmd_demo(args: argparse.Namespace) -> int:
    from lfr.config import default_config
    from lfr.demo import demo_config, demo_photos
    from lfr.pipeline.wiring import build_analyzer

    data = _demo_folder(args)
    with tempfile.TemporaryDirectory(prefix="lfr-demo-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        bundle = out / "watchlist"
        registry = load_registry()
        # The demo runs on lfr's default models.
        analyzer = build_analyzer(default_config("watchlist"), registry)
        report = enrol(data / "people", bundle, None, not args.json, analyzer)
        if not args.json:
            stderr.print(outcome_table(report))
        config: Config = demo_config(data, bundle, out / "data", console=not args.json)
        alerts, summary = _run_deployment(config, offline=True, once=True,
                                          photos=demo_photos(data), as_json=args.json,
                                          registry=registry, analyzer=analyzer)
        return print_run(alerts, summary, args.json)


def _listen_address(value: str) -> str:
    from lfr.config import parse_listen

    try:
        parse_listen(value, "--metrics")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run a deployment from a TOML config until stopped")
    run.add_argument("config", help="deployment config (TOML), e.g. configs/demo.toml")
    run.add_argument("--once", action="store_true",
                     help="play file cameras once (no looping) and exit when they end")
    run.add_argument("--user", metavar="NAME",
                     help="log in as this user (lfr users); --dashboard asks for a name if not "
                     "given. Decisions and the start record name the user")
    run.add_argument("--password-stdin", action="store_true",
                     help="read --user's password from the first line of stdin (else: asked)")
    run.add_argument("--dashboard", action="store_true",
                     help="live terminal dashboard: cameras, queues, alerts; adjudicate by keys")
    run.add_argument("--web", metavar="HOST:PORT",
                     help="serve the browser viewer (WebRTC) here, e.g. 127.0.0.1:8080")
    run.add_argument("--metrics", metavar="HOST:PORT", type=_listen_address,
                     help="serve Prometheus /metrics and /healthz here, e.g. 127.0.0.1:9108")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="json: one JSON object per log line on stderr, for log shippers")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="build a watchlist from demo photos, process every frame "
                          "of the demo videos and every scene photo, print the alerts")
    demo.add_argument("--data", help="demo folder with people/, scenes/, video/ "
                      "(default: $LFR_DEMO_DATA or shared/data/demo beside the repository)")
    demo.add_argument("--out", help="keep the watchlist and records here (default: temporary)")
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.set_defaults(func=cmd_demo)
