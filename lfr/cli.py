"""The ``lfr`` command line.

Human output and progress go to stderr; ``--json`` prints one JSON object on stdout and nothing
else. Exit codes: 0 done, 1 failed while running, 2 bad usage, config or input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lfr import __version__

stderr = Console(stderr=True)
log = logging.getLogger("lfr")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Command groups that live beside their code; each module has register(subparsers), adding
# sub-commands that set func(args) -> exit code and may raise UserError.
COMMAND_MODULES: tuple[str, ...] = (
    "lfr.cli_ops",
    "lfr.eval.cli",
)


class UserError(Exception):
    """A problem the user can fix (config, paths, input): message printed, exit code 2."""


def _print_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")
    sys.stdout.flush()


@contextmanager
def _progress(description: str, total: int | None, enabled: bool = True
              ) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    def nothing(n: int = 1) -> None:
        pass

    if not enabled:
        yield nothing
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=total)
        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


# -- watchlist ----------------------------------------------------------------------------------


def _config_analyzer(config: Any | None, registry: Any | None = None) -> Any:
    """The detector and embedder a deployment with this config uses (None: lfr's defaults)."""
    from lfr.config import default_config
    from lfr.deployment import build_analyzer

    if config is None:
        config = default_config("watchlist")
    return build_analyzer(config, registry or _load_registry())


def _build_watchlist(source: Path, output: Path, expiry: str | None, show_progress: bool,
                     analyzer: Any | None = None, **options: Any) -> Any:
    from lfr.watchlist import WatchlistError, build_watchlist, count_images

    analyzer = analyzer or _config_analyzer(None)
    try:
        total = count_images(source)
        with _progress(f"enrolling {source}", total, show_progress) as advance:
            return build_watchlist(source, output, analyzer, expiry=expiry,
                                   progress=lambda outcome: advance(1), **options)
    except WatchlistError as exc:
        raise UserError(str(exc)) from None


def _outcome_table(report: Any) -> Table:
    table = Table(title=f"watchlist {report.output}", title_justify="left")
    table.add_column("outcome")
    table.add_column("images", justify="right")
    for outcome, n in sorted(report.counts().items()):
        table.add_row(outcome, str(n))
    return table


def cmd_watchlist_build(args: argparse.Namespace) -> int:
    from lfr.config import load_config

    config = load_config(Path(args.config)) if args.config else None
    from lfr.vision.image_file import ImageLimits

    report = _build_watchlist(Path(args.source), Path(args.output), args.expiry, not args.json,
                              _config_analyzer(config), allow_outside=args.allow_outside,
                              limits=ImageLimits(max_pixels=round(args.max_megapixels * 1e6)))
    if args.json:
        _print_json(report.to_dict())
    else:
        stderr.print(_outcome_table(report))
        for item in report.problems():
            stderr.print(f"[yellow]{escape(item)}[/]")
        stderr.print(f"{report.persons_enrolled} people enrolled -> {args.output}")
    return EXIT_OK if report.persons_enrolled else EXIT_FAILED


def cmd_watchlist_info(args: argparse.Namespace) -> int:
    from lfr.watchlist import WatchlistError, bundle_info

    try:
        info = bundle_info(Path(args.bundle))
    except WatchlistError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        _print_json(info)
    else:
        table = Table(show_header=False, title=str(args.bundle), title_justify="left")
        for key, value in info.items():
            if key != "persons_detail":
                table.add_row(key, str(value))
        stderr.print(table)
    return EXIT_OK


# -- run / demo ---------------------------------------------------------------------------------


def _load_registry() -> Any:
    from lfr.plugins import load_plugins

    registry = load_plugins()
    for plugin in registry.plugins:
        if plugin.error:
            stderr.print(f"[yellow]plugin {plugin.name} skipped: {escape(plugin.error)}[/]")
    return registry


def _run_deployment(config: Any, *, offline: bool, once: bool, photos: Sequence[Path] = (),
                    as_json: bool, services: Sequence[Any] = (), registry: Any | None = None,
                    analyzer: Any | None = None) -> tuple[list[Any], Any]:
    """Run it; ``registry`` and ``analyzer`` when the command has loaded them already."""
    import anyio

    from lfr.deployment import Deployment

    alerts: list[Any] = []
    deployment = Deployment(config, registry or _load_registry(), offline=offline, once=once,
                            photos=photos, on_alert=alerts.append, analyzer=analyzer)
    summary = anyio.run(lambda: deployment.run(services=services))
    return alerts, summary


def _report(alerts: list[Any], summary: Any, as_json: bool) -> None:
    if as_json:
        _print_json({"alerts": [a.summary() for a in alerts],
                     "summary": msgspec.to_builtins(summary)})
        return
    table = Table(title=f"{len(alerts)} alerts", title_justify="left")
    for column in ("time", "camera", "person", "score", "frame"):
        table.add_column(column)
    for a in alerts:
        table.add_row(a.time, a.camera, f"{a.name} ({a.person_id})", f"{a.score:.3f}",
                      str(a.frame_index))
    stderr.print(table)
    stderr.print(
        f"frames {summary.frames}, faces {summary.faces}, alerts {summary.alerts}, "
        f"dropped frames {summary.dropped_frames}, restarts {summary.restarts}, "
        f"{summary.seconds:.1f} s; records in {summary.data_dir}")
    for name in summary.failed_actors:
        stderr.print(f"[red]failed: {escape(name)}[/]")
    for error in summary.photo_errors:
        stderr.print(f"[yellow]{escape(error)}[/]")


def _prepare_watchlist(config: Any, as_json: bool, registry: Any) -> Any | None:
    """Build the configured bundle from its ``source`` folder if it does not exist yet, or was
    made by another embedder than the config's (its scores would not fit the threshold).
    Returns the analyzer it loaded to know (None when there is no source), for the deployment
    to use rather than load the models again."""
    from lfr.watchlist import WatchlistError, bundle_info

    wl = config.watchlist
    if wl is None or wl.source is None:
        return None
    bundle = config.resolve_path(wl.bundle)
    analyzer = _config_analyzer(config, registry)
    if (bundle / "manifest.json").is_file():
        try:
            built_with = bundle_info(bundle).get("embedder")
        except WatchlistError:
            return analyzer  # the deployment reports what is wrong with it
        running = analyzer.embedder.name
        if built_with == running:
            return analyzer
        stderr.print(f"rebuilding watchlist {bundle}: it was built with embedder "
                     f"{built_with!r}, the config embeds with {running!r}")
    else:
        stderr.print(f"building watchlist {bundle} from {config.resolve_path(wl.source)}")
    _build_watchlist(config.resolve_path(wl.source), bundle, None, not as_json, analyzer)
    return analyzer


def cmd_run(args: argparse.Namespace) -> int:
    from lfr.config import load_config

    config = load_config(Path(args.config))
    if args.operator:
        config = msgspec.structs.replace(config, operator=args.operator)
    registry = _load_registry()
    analyzer = _prepare_watchlist(config, args.json, registry)
    services: list[Any] = []
    if args.web or config.web.enabled:
        from lfr.web import WebService

        web = config.web if not args.web else msgspec.structs.replace(config.web, listen=args.web)
        services.append(WebService(web, operator=args.operator).run)
    if args.dashboard:
        from lfr.dashboard import DashboardService

        services.append(DashboardService(operator=args.operator).run)
    alerts, summary = _run_deployment(config, offline=False, once=args.once, as_json=args.json,
                                      services=services, registry=registry, analyzer=analyzer)
    _report(alerts, summary, args.json)
    return EXIT_FAILED if summary.failed_actors and not summary.frames else EXIT_OK


def default_demo_data() -> Path:
    """``$LFR_DEMO_DATA``, else ``shared/data/demo`` beside the repository."""
    if os.environ.get("LFR_DEMO_DATA"):
        return Path(os.environ["LFR_DEMO_DATA"])
    repo = Path(__file__).resolve().parent.parent
    for candidate in (repo.parent / "shared" / "data" / "demo",
                      Path.cwd().parent / "shared" / "data" / "demo"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "data" / "demo"


def cmd_demo(args: argparse.Namespace) -> int:
    from lfr.config import parse_config
    from lfr.sources.stills import IMAGE_SUFFIXES

    data = Path(args.data) if args.data else default_demo_data()
    if not (data / "people").is_dir():
        raise UserError(f"{data}: not a demo folder (it needs people/, and video/ or scenes/); "
                        "pass --data DIR or set LFR_DEMO_DATA")
    videos = sorted(p for p in (data / "video").glob("*") if p.is_file())
    photos = sorted(p for p in (data / "scenes").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    with tempfile.TemporaryDirectory(prefix="lfr-demo-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        bundle = out / "watchlist"
        registry = _load_registry()
        analyzer = _config_analyzer(None, registry)  # the demo runs on the default models
        report = _build_watchlist(data / "people", bundle, None, not args.json, analyzer)
        if not args.json:
            stderr.print(_outcome_table(report))
        config = parse_config({
            "name": "demo", "location": f"demo data {data}", "data_dir": str(out / "data"),
            "watchlist": {"bundle": str(bundle)},
            "cameras": [{"name": v.stem, "url": str(v), "realtime": False, "loop": False}
                        for v in videos],
            "notifiers": [{"kind": "jsonl"}] + ([] if args.json else [{"kind": "console"}]),
        }, "demo")
        alerts, summary = _run_deployment(config, offline=True, once=True, photos=photos,
                                          as_json=args.json, registry=registry, analyzer=analyzer)
        _report(alerts, summary, args.json)
    return EXIT_OK


# -- plugins ------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from lfr.plugins import BACKEND_KINDS

    registry = _load_registry()
    plugins = [{"name": p.name, "distribution": p.distribution, "version": p.version,
                "builtin": p.builtin, "hooks": p.hooks,
                "provides": {k: p.provides.get(k, []) for k in BACKEND_KINDS},
                "error": p.error} for p in registry.plugins]
    if args.json:
        _print_json({"plugins": plugins})
        return EXIT_OK
    table = Table(title="plugins", title_justify="left")
    for column in ("name", "version", "hooks", "provides", "error"):
        table.add_column(column)
    for p in plugins:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["provides"].items() if v)
        hooks = ", ".join(h.removeprefix("lfr_register_") for h in p["hooks"])
        table.add_row(str(p["name"]), str(p["version"] or ""), hooks, provides,
                      str(p["error"] or ""))
    stderr.print(table)
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfr", description="Live facial recognition with "
                                     "audited alerts: cameras, watchlist matching, adjudication.")
    parser.add_argument("--version", action="version", version=f"lfr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a deployment from a TOML config until stopped")
    run.add_argument("config", help="deployment config (TOML), e.g. configs/demo.toml")
    run.add_argument("--once", action="store_true",
                     help="play file cameras once (no looping) and exit when they end")
    run.add_argument("--operator", help="who is operating (audit log); default: config or OS user")
    run.add_argument("--dashboard", action="store_true",
                     help="live terminal dashboard: cameras, queues, alerts; adjudicate by keys")
    run.add_argument("--web", metavar="HOST:PORT",
                     help="serve the browser viewer (WebRTC) here, e.g. 127.0.0.1:8080")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="build a watchlist from demo photos, process every frame "
                          "of the demo videos and every scene photo, print the alerts")
    demo.add_argument("--data", help="demo folder with people/, scenes/, video/ "
                      "(default: $LFR_DEMO_DATA or shared/data/demo beside the repository)")
    demo.add_argument("--out", help="keep the watchlist and records here (default: temporary)")
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.set_defaults(func=cmd_demo)

    wl = sub.add_parser("watchlist", help="build and inspect watchlist bundles")
    wl_sub = wl.add_subparsers(dest="watchlist_command", required=True, metavar="COMMAND")
    wl.set_defaults(subcommands=wl_sub)  # command modules add to the group (watchlist destroy)
    build = wl_sub.add_parser("build", help="enrol a folder per person, or a CSV, into a bundle")
    build.add_argument("source", help="folder of <person_id>/ folders, or a CSV "
                       "(id,name,image[,category,notes,expiry])")
    build.add_argument("-o", "--output", required=True, help="bundle folder to write")
    build.add_argument("--expiry", help="ISO date/time after which the bundle refuses to load")
    build.add_argument("--config", help="deployment config whose detector and embedder enrol "
                       "(default: lfr's defaults); a deployment refuses a bundle from another "
                       "embedder")
    build.add_argument("--allow-outside", action="store_true",
                       help="a CSV may name images outside its own folder")
    build.add_argument("--max-megapixels", type=_positive_float, default=50.0, metavar="MP",
                       help="refuse images larger than this, from their header (default 50)")
    build.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    build.set_defaults(func=cmd_watchlist_build)
    info = wl_sub.add_parser("info", help="describe a bundle")
    info.add_argument("bundle")
    info.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    info.set_defaults(func=cmd_watchlist_info)

    plugins = sub.add_parser("plugins", help="list plugins, their backends and failures")
    plugins.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    plugins.set_defaults(func=cmd_plugins)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
        stderr.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
