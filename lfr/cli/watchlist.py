"""``lfr watchlist build|check|info|destroy``; and ``prepare_watchlist()``, which builds a
deployment's bundle from its source folder when the library says it must (``run``,
``eval video``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from lfr.cli.options import add_location, location_config
from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, progress, stderr
from lfr.cli.plugins import load_registry

if TYPE_CHECKING:
    from lfr.config import Config
    from lfr.plugins import Registry
    from lfr.sealed import DataKey
    from lfr.vision.analyzer import FaceAnalyzer
    from lfr.watchlist import BuildReport
    from lfr.watchlist.check import CheckReport, Crowd


def enrol(source: Path, output: Path, expiry: str | None, show_progress: bool,
          analyzer: FaceAnalyzer, **options: Any) -> BuildReport:
    """``build_watchlist`` with a progress bar; its errors are the user's to fix. ``options``:
    ``build_watchlist``'s (``limits``, ``allow_outside``)."""
    from lfr.watchlist import WatchlistError, build_watchlist, count_images

    try:
        total = count_images(source)
        with progress(f"enrolling {source}", total, show_progress) as advance:
            return build_watchlist(source, output, analyzer, expiry=expiry,
                                   progress=lambda outcome: advance(1), **options)
    except WatchlistError as exc:
        raise UserError(str(exc)) from None


def config_data_key(config: Config) -> DataKey:
    """The key a config's bundles are sealed with: its ``[keys] data_key`` or the user's."""
    from lfr.keys import load_data_key

    return load_data_key(config.data_key_file())


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def outcome_table(report: BuildReport) -> Table:
    table = Table(title=f"watchlist {report.output}", title_justify="left")
    table.add_column("outcome")
    table.add_column("images", justify="right")
    for outcome, n in sorted(report.counts().items()):
        table.add_row(outcome, str(n))
    return table


def prepare_watchlist(config: Config, as_json: bool, registry: Registry) -> FaceAnalyzer | None:
    """Build the configured bundle from its ``source`` folder when ``rebuild_reason`` says it
    must. Returns the analyzer it loaded to know (None when there is no source), for the
    deployment to use rather than load the models again."""
    from lfr.pipeline.wiring import build_analyzer
    from lfr.watchlist import rebuild_reason

    wl = config.watchlist
    if wl is None or wl.source is None:
        return None
    analyzer = build_analyzer(config, registry)
    bundle, source = config.resolve_path(wl.bundle), config.resolve_path(wl.source)
    reason = rebuild_reason(bundle, source, analyzer.embedder.name)
    if reason is not None:
        stderr.print(reason)
        crowd = (_crowd(str(config.resolve_path(wl.crowd)), analyzer, not as_json)
                 if wl.crowd else None)
        enrol(source, bundle, None, not as_json, analyzer, key=config_data_key(config),
              crowd=crowd)
    return analyzer


def cmd_watchlist_build(args: argparse.Namespace) -> int:
    from lfr.pipeline.wiring import build_analyzer
    from lfr.vision.image_file import ImageLimits

    config = _watchlist_config(args.config)
    analyzer = build_analyzer(config, load_registry())
    crowd = _crowd(args.crowd, analyzer, not args.json) if args.crowd else None
    report = enrol(Path(args.source), Path(args.output), args.expiry, not args.json,
                   analyzer, allow_outside=args.allow_outside,
                   limits=ImageLimits(max_pixels=round(args.max_megapixels * 1e6)),
                   key=config_data_key(config), crowd=crowd, views=args.views)
    checked = (_check(Path(args.output), config, crowd, args.top)
               if report.persons_enrolled else None)
    if args.json:
        print_json(report.to_dict() | {"check": checked})
    else:
        stderr.print(outcome_table(report))
        for item in report.problems():
            stderr.print(f"[yellow]{escape(item)}[/]")
        stderr.print(f"{report.persons_enrolled} people enrolled -> {args.output}")
        if checked is not None:
            _print_check(checked)
    return EXIT_OK if report.persons_enrolled else EXIT_FAILED


def _watchlist_config(path: str | None) -> Config:
    from lfr.config import default_config, load_config

    return load_config(Path(path)) if path else default_config("watchlist")


def _crowd(folder: str, analyzer: FaceAnalyzer, show_progress: bool) -> Crowd:
    """The reference crowd of ``--crowd``, embedded (cached) by the bundle's own models."""
    from lfr.eval.crowd import load_crowd
    from lfr.eval.dataset import default_cache_dir
    from lfr.eval.identify import DatasetError, list_people

    root = Path(folder)
    try:
        total = sum(len(p) for p in list_people(root).values())
        with progress(f"embedding the crowd {root}", total, show_progress) as advance:
            done = [0]

            def step(n: int, _total: int) -> None:
                advance(n - done[0])
                done[0] = n

            return load_crowd(root, analyzer, cache=default_cache_dir(), progress=step)
    except DatasetError as exc:
        raise UserError(f"--crowd {exc}") from None


def _check(bundle: Path, config: Config, crowd: Crowd | None, top: int) -> CheckReport:
    from lfr.watchlist import WatchlistError, load_bundle
    from lfr.watchlist.check import check_watchlist

    try:
        watchlist = load_bundle(bundle, key=config_data_key(config))
    except WatchlistError as exc:
        raise UserError(str(exc)) from None
    if crowd is not None and len(crowd.vectors) and crowd.vectors.shape[1] != watchlist.dim:
        raise UserError(f"--crowd {crowd.root}: embeddings of {crowd.vectors.shape[1]} "
                        f"dimensions, the bundle's have {watchlist.dim}")
    return check_watchlist(watchlist, config.matching.threshold, crowd, top=top)


def _print_check(report: CheckReport) -> None:
    from lfr.watchlist.check import summary_lines

    for line in summary_lines(report):
        stderr.print(escape(line), highlight=False)


def cmd_watchlist_check(args: argparse.Namespace) -> int:
    from lfr.pipeline.wiring import build_analyzer
    from lfr.watchlist import WatchlistError, bundle_info

    if args.top < 1:
        raise UserError(f"--top {args.top}: must be >= 1")
    config = _watchlist_config(args.config)
    bundle = Path(args.bundle)
    try:
        info = bundle_info(bundle)  # fail fast, before loading models
    except WatchlistError as exc:
        raise UserError(str(exc)) from None
    crowd = None
    if args.crowd:
        analyzer = build_analyzer(config, load_registry())
        if info.get("embedder") != analyzer.embedder.name:
            raise UserError(f"{bundle}: built with embedder {info.get('embedder')!r}, the "
                            f"config embeds with {analyzer.embedder.name!r}: rebuild it first")
        crowd = _crowd(args.crowd, analyzer, not args.json)
    report = _check(bundle, config, crowd, args.top)
    if args.json:
        print_json(report)
    else:
        _print_check(report)
    return EXIT_OK


def cmd_watchlist_info(args: argparse.Namespace) -> int:
    from lfr.watchlist import WatchlistError, bundle_info

    try:
        info = bundle_info(Path(args.bundle))
    except WatchlistError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json(info)
    else:
        table = Table(show_header=False, title=str(args.bundle), title_justify="left")
        for key, value in info.items():
            if key != "persons_detail":
                table.add_row(key, str(value))
        stderr.print(table)
    return EXIT_OK


def destroyer(args: argparse.Namespace, config: Config | None) -> str:
    """Who destroys the watchlist. Where the deployment has named users (a users file with an
    active user), a supervisor logs in (``--user``): managing the watchlist is theirs. Without
    users (a trial, the demo) the name given, else the OS user, is recorded as before."""
    from lfr.cli.users import login
    from lfr.config import Config
    from lfr.users import UsersFileError, UserStore

    store = UserStore(config.users_file() if config is not None else None)
    try:
        named = any(not u.disabled for u in store.users().values())
    except UsersFileError as exc:
        raise UserError(str(exc)) from None
    if not named and not args.user:
        return (config or Config(name="cli")).operator_name(args.operator)
    user = login(store, args.user, args.password_stdin)
    if not user.may("manage_watchlist"):
        raise UserError(f"{user.name} is an {user.role}: only a supervisor may destroy a "
                        "watchlist; nothing deleted")
    return user.name


def cmd_watchlist_destroy(args: argparse.Namespace) -> int:
    from lfr.audit import AuditError, AuditLog, Kind
    from lfr.watchlist import WatchlistError, destroy_bundle

    config = location_config(args)
    if getattr(args, "nats", None):
        return _destroy_published(args, config)
    if args.bundle is None:
        raise UserError("watchlist destroy: give the bundle folder (or --nats URL --deployment "
                        "NAME for a deployment spread over nodes)")
    bundle = Path(args.bundle)
    operator = destroyer(args, config)  # before anything is opened or deleted
    audit: AuditLog | None = None
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is None and config is not None:
        data_dir = config.resolved_data_dir()
    if data_dir is not None:
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
            audit.append(Kind.WATCHLIST_DESTROYED, {**record, "operator": operator})
            record["audited_in"] = str(audit.path)
    finally:
        if audit is not None:
            audit.close()
    if args.json:
        print_json({"destroyed": record})
    else:
        stderr.print(f"destroyed watchlist {bundle} (sha256 {digest})", highlight=False)
        if audit is None:
            stderr.print(
                "[yellow]not audited: pass --config or --data-dir to record it in a "
                "deployment's audit log[/]"
            )
    return EXIT_OK


def _destroy_published(args: argparse.Namespace, config: Config | None) -> int:
    from lfr.cli.cluster import destroy_published

    if not args.deployment:
        raise UserError("watchlist destroy --nats: name the deployment (--deployment NAME)")
    operator = destroyer(args, config)  # before anything is deleted
    record = destroy_published(args, operator)
    if args.json:
        print_json({"destroyed": record})
    else:
        stderr.print(f"destroyed the watchlist of {args.deployment} (version "
                     f"{record['version']}): every node deletes its copy", highlight=False)
    return EXIT_OK


def register(sub: Any) -> None:
    wl = sub.add_parser("watchlist", help="build and inspect watchlist bundles")
    wl_sub = wl.add_subparsers(dest="watchlist_command", required=True, metavar="COMMAND")
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
    build.add_argument("--max-megapixels", type=positive_float, default=50.0, metavar="MP",
                       help="refuse images larger than this, from their header (default 50)")
    build.add_argument("--views", action="store_true",
                       help="enrol each photo as the mean of augmented views (re-aligned with "
                       "scale and shift jitter, mildly blurred): 8 embeddings per photo")
    _add_check_options(build)
    build.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    build.set_defaults(func=cmd_watchlist_build)

    check = wl_sub.add_parser(
        "check", help="the entries that would raise most false alerts, with advice "
        "(photo quality, look-alike entries, scores against a crowd of unlisted faces)")
    check.add_argument("bundle", help="bundle folder to check")
    check.add_argument("--config", help="deployment config: its threshold, models and data key "
                       "(default: lfr's defaults)")
    _add_check_options(check)
    check.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    check.set_defaults(func=cmd_watchlist_check)

    info = wl_sub.add_parser("info", help="describe a bundle")
    info.add_argument("bundle")
    info.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    info.set_defaults(func=cmd_watchlist_info)

    destroy = wl_sub.add_parser(
        "destroy",
        help="delete a bundle (expired ones too) and record that in the audit log",
    )
    destroy.add_argument("bundle", nargs="?", help="bundle folder to delete")
    add_location(destroy, required=False)
    destroy.add_argument("--user", metavar="NAME",
                         help="log in as this supervisor (required where the deployment has "
                         "named users: lfr users)")
    destroy.add_argument("--password-stdin", action="store_true",
                         help="read --user's password from the first line of stdin (else: asked)")
    destroy.add_argument("--operator", help="without named users: who destroys it (audit log); "
                         "default: OS user")
    destroy.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    destroy.set_defaults(func=cmd_watchlist_destroy)
    from lfr.cli.cluster import add_watchlist_commands

    add_watchlist_commands(wl_sub, destroy)


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crowd", metavar="DIR",
                        help="reference crowd: a folder of <person>/<image> folders of people "
                        "not on the list (e.g. a dataset); folders named like a listed id are "
                        "left out as that person's own photos")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="list the N riskiest entries (and every one over the threshold; "
                        "default 20)")
