"""``lfr eval verify|identify|video`` and ``lfr calibrate``: measure accuracy, choose thresholds.

Evaluation builds its detector and embedder from the config (``--config``, else the defaults)
through the same plugin registry as a deployment, so it measures what would be deployed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec

from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, stderr
from lfr.cli.plugins import load_registry
from lfr.cli.watchlist import prepare_watchlist


def _config(path: str | None) -> Any:
    from lfr.config import default_config, load_config

    if path:
        return load_config(Path(path))
    return default_config("eval")


def _analyzer(config: Any) -> Any:
    """The config's detector and embedder, built as a deployment builds them (no size gate:
    evaluation counts every face it can find)."""
    from lfr.pipeline.wiring import build_analyzer
    from lfr.vision.quality import QualityGate

    return build_analyzer(config, load_registry(), QualityGate(min_face_px=0))


def _crowd_weight(config: Any, given: float | None) -> float:
    """The per-entry calibration the config's deployment applies, which evaluation and
    calibration then measure: ``[matching] crowd_weight`` when its watchlist carries crowd means
    (a bundle built with a crowd, or ``[watchlist] crowd`` naming one for its build) or when no
    watchlist is configured (the models alone); 0 for a bundle without them, whose matcher
    compares plain cosines. ``given`` (--crowd-weight) overrides."""
    from lfr.watchlist.bundle import WatchlistError, has_crowd_means

    weight = given
    if weight is None:
        watchlist, weight = config.watchlist, config.matching.crowd_weight
        if watchlist is not None and not watchlist.crowd:
            try:
                calibrated = has_crowd_means(config.resolve_path(watchlist.bundle))
            except WatchlistError:  # not built yet: built as configured, without a crowd
                calibrated = False
            weight = weight if calibrated else 0.0
    if not 0 <= weight <= 2:
        raise UserError(f"--crowd-weight {weight}: must be from 0 to 2")
    return float(weight)


def _cache(args: argparse.Namespace) -> Path | None:
    from lfr.eval.dataset import default_cache_dir

    return None if args.no_cache else default_cache_dir()


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds is None:
        return [args.seed]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: expected integers separated by commas") from None
    if not seeds:
        raise UserError("--seeds: no seed given")
    return seeds


# -- eval verify --------------------------------------------------------------------------------


def cmd_eval_verify(args: argparse.Namespace) -> int:
    from rich.progress import Progress as RichProgress

    from lfr.eval.pairs import PairsError, parse_pairs
    from lfr.eval.verify import render_verify, run_verify

    pairs_file, images = Path(args.pairs), Path(args.images)
    try:
        parse_pairs(pairs_file)  # fail fast, before loading models
    except (PairsError, OSError) as exc:
        raise UserError(str(exc)) from None
    if not images.is_dir():
        raise UserError(f"{images}: images folder not found")
    analyzer = _analyzer(_config(args.config))
    with RichProgress(console=stderr, transient=True, disable=args.json) as bar:
        task = bar.add_task("embedding pair images", total=None)
        report = run_verify(
            pairs_file,
            images,
            analyzer,
            cache=_cache(args),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if args.json:
        print_json(report)
    else:
        stderr.print(render_verify(report))
    return EXIT_OK


# -- eval identify ------------------------------------------------------------------------------


def cmd_eval_identify(args: argparse.Namespace) -> int:
    from rich.progress import Progress as RichProgress

    from lfr.eval.identify import DatasetError, list_people, plot_det, render_identify, run_identify

    seeds = _seeds(args)
    if args.gallery_size is not None and args.gallery_size < 1:
        raise UserError(f"--gallery-size {args.gallery_size}: must be >= 1")
    for flag, value in (("--enrol-images", args.enrol_images), ("--max-probes", args.max_probes)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    dataset = Path(args.dataset)
    try:
        list_people(dataset)  # fail fast, before loading models
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install 'lfr[plot]'") from None
    config = _config(args.config)
    crowd_weight = _crowd_weight(config, args.crowd_weight)
    with RichProgress(console=stderr, transient=True, disable=args.json) as bar:
        task = bar.add_task("embedding dataset images", total=None)
        try:
            report, scores = run_identify(
                dataset,
                _analyzer(config),
                seeds=seeds,
                threshold=config.matching.threshold,
                gallery_size=args.gallery_size,
                enrol_images=args.enrol_images,
                max_probes=args.max_probes,
                fix_labels=args.fix_labels,
                cache=_cache(args),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                crowd_weight=crowd_weight,
            )
        except DatasetError as exc:
            raise UserError(str(exc)) from None
    if args.plot:
        plot_det(scores, report, Path(args.plot))
    if args.json:
        print_json(report)
    else:
        stderr.print(render_identify(report))
        if args.plot:
            stderr.print(f"DET curve -> {args.plot}")
    return EXIT_OK


# -- eval video ---------------------------------------------------------------------------------


def cmd_eval_video(args: argparse.Namespace) -> int:
    from rich.progress import Progress as RichProgress

    from lfr.config import load_config
    from lfr.eval.video import (
        TruthError,
        compare,
        load_truth,
        render_compare,
        render_video,
        run_video,
    )

    try:
        truth = load_truth(Path(args.truth))
    except TruthError as exc:
        raise UserError(str(exc)) from None
    config = load_config(Path(args.config))
    thresholds = _compare_thresholds(args.compare, config.matching.threshold)
    registry = load_registry()
    analyzer = prepare_watchlist(config, args.json, registry)
    with RichProgress(console=stderr, transient=True, disable=args.json) as bar:
        task = bar.add_task("playing the video through a deployment", total=truth.frames)
        report, recording = run_video(
            config,
            truth,
            registry,
            analyzer=analyzer,
            record=thresholds is not None,
            progress=lambda index: bar.update(task, completed=index + 1),
        )
    rows = (
        compare(recording, truth, thresholds, config.quality.min_face_px)
        if recording is not None and thresholds
        else None
    )
    if args.json:
        print_json(report if rows is None else {**msgspec.to_builtins(report), "compare": rows})
    else:
        stderr.print(render_video(report))
        if rows is not None:
            stderr.print(render_compare(rows))
    return EXIT_OK if report.frames else EXIT_FAILED


def _compare_thresholds(value: str | None, configured: float) -> list[float] | None:
    """``--compare`` without a list: the configured threshold and its neighbours."""
    if value is None:
        return None
    if value == "":
        return sorted({round(configured + d, 4) for d in (-0.04, -0.02, 0.0, 0.02)})
    try:
        thresholds = sorted({float(t) for t in value.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--compare {value!r}: expected thresholds separated by commas") from None
    if not thresholds or not all(-1.0 <= t <= 1.0 for t in thresholds):
        raise UserError(f"--compare {value!r}: thresholds are cosines, from -1 to 1")
    return thresholds


# -- calibrate ----------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rich.progress import Progress as RichProgress

    from lfr.eval.calibrate import calibrate, render_calibration, write_threshold
    from lfr.eval.dataset import default_dataset
    from lfr.eval.identify import DatasetError, list_people

    for flag, value in (("--footfall", args.footfall), ("--watchlist-size", args.watchlist_size),
                        ("--enrol-images", args.enrol_images)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    if not 0 < args.false_alerts_per_day <= args.footfall:
        raise UserError(
            f"--false-alerts-per-day {args.false_alerts_per_day}: must be above 0 "
            f"and at most the footfall ({args.footfall})"
        )
    dataset = Path(args.dataset) if args.dataset else default_dataset()
    try:
        list_people(dataset)
    except DatasetError as exc:
        raise UserError(
            f"{exc} (calibration measures score distributions on a "
            "<person>/<image> dataset: pass --dataset DIR)"
        ) from None
    config = _config(args.config or args.write)
    crowd_weight = _crowd_weight(config, args.crowd_weight)
    with RichProgress(console=stderr, transient=True, disable=args.json) as bar:
        task = bar.add_task("embedding dataset images", total=None)
        result = calibrate(
            dataset,
            _analyzer(config),
            footfall=args.footfall,
            false_alerts_per_day=args.false_alerts_per_day,
            watchlist_size=args.watchlist_size,
            seed=args.seed,
            enrol_images=args.enrol_images,
            fix_labels=args.fix_labels,
            cache=_cache(args),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            crowd_weight=crowd_weight,
        )
    if args.write:
        try:
            write_threshold(Path(args.write), result.threshold)
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None
    if args.json:
        print_json(result)
    else:
        stderr.print(render_calibration(result))
        if args.write:
            stderr.print(f"matching.threshold = {result.threshold:.4f} written to {args.write}")
    return EXIT_OK


# -- parsers ------------------------------------------------------------------------------------


def _add_output_options(parser: argparse.ArgumentParser, cache: bool = True) -> None:
    if cache:
        parser.add_argument(
            "--no-cache",
            action="store_true",
            help="do not read or write the embedding cache (~/.cache/lfr/eval)",
        )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_fix_labels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fix-labels",
        action="store_true",
        help="apply lfr's list of LFW label errors first (merged names, relabelled and "
        "excluded images; listed in the output)",
    )


def _add_crowd_weight(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--crowd-weight",
        type=float,
        metavar="W",
        help="per-entry calibration weight ([matching] crowd_weight; 0: plain cosines); the "
        "crowd is half the people not listed, scored by the other half (default: what the "
        "config's deployment applies: its weight when its bundle is built with a crowd or no "
        "watchlist is configured, else 0)",
    )


def register(sub: Any) -> None:
    ev = sub.add_parser("eval", help="measure accuracy on a dataset or a video")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")

    verify = ev_sub.add_parser("verify", help="LFW verification protocol (10 folds)")
    verify.add_argument(
        "--pairs", required=True, help="LFW pairs.txt or the fold-prefixed TSV (lfw-dev-pairs.tsv)"
    )
    verify.add_argument("--images", required=True, help="folder of <Name>/<Name>_NNNN.jpg")
    verify.add_argument(
        "--config", help="deployment config whose models are measured (default: lfr's defaults)"
    )
    _add_output_options(verify)
    verify.set_defaults(func=cmd_eval_verify)

    ident = ev_sub.add_parser(
        "identify",
        help="open-set identification (1:N): TPIR at FPIR, DET curve",
        description="Enrol K images per listed person; search with their other images (mated) "
        "and with everyone else's (non-mated); report TPIR at FPIR 1e-2/1e-3/1e-4 and at the "
        "configured threshold.",
    )
    ident.add_argument("--dataset", required=True, help="folder of <person>/<image> files")
    ident.add_argument(
        "--gallery-size",
        type=int,
        metavar="N",
        help="people listed (default: half of those with K+1 or more images)",
    )
    ident.add_argument(
        "--enrol-images",
        type=int,
        default=1,
        metavar="K",
        help="images enrolled per listed person (default 1)",
    )
    seeds = ident.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=1, metavar="S", help="draw seed (default 1)")
    seeds.add_argument("--seeds", metavar="1,2,3", help="several draws; numbers are their means")
    ident.add_argument(
        "--config", help="deployment config: models and threshold (default: lfr's defaults)"
    )
    ident.add_argument(
        "--max-probes",
        type=int,
        default=10,
        metavar="N",
        help="mated searches per listed person at most (default 10)",
    )
    _add_fix_labels(ident)
    _add_crowd_weight(ident)
    ident.add_argument("--plot", metavar="FILE.png", help="write the DET curve (needs matplotlib)")
    _add_output_options(ident)
    ident.set_defaults(func=cmd_eval_identify)

    video = ev_sub.add_parser(
        "video",
        help="person-level accuracy on a video with ground truth (tools/make_walkpast.py)",
        description="Plays the config's cameras once through a real deployment (offline: every "
        "frame processed) and scores its alerts against the truth: person-level TPIR, false "
        "alerts per 1,000 passers-by, duplicates, late alerts, time to alert.",
    )
    video.add_argument(
        "--config", required=True, help="deployment config whose camera plays the video"
    )
    video.add_argument("--truth", required=True, help="ground-truth JSON of the video")
    video.add_argument(
        "--compare",
        nargs="?",
        const="",
        metavar="T1,T2,...",
        help="also replay the same detections with other decision rules (per frame, Frigate's "
        "weighted score, score and embedding fusion, as configured) at these thresholds "
        "(default: the configured one and its neighbours)",
    )
    _add_output_options(video, cache=False)
    video.set_defaults(func=cmd_eval_video)

    cal = sub.add_parser(
        "calibrate",
        help="choose the threshold for a footfall, a false-alert budget and a watchlist size",
        description="Measures non-mated score distributions on a dataset (scaled to the "
        "watchlist size) and picks the threshold that keeps false alerts within the budget; "
        "prints expected TPIR and false alerts per day with 95% confidence intervals.",
    )
    cal.add_argument(
        "--footfall",
        type=int,
        required=True,
        metavar="N",
        help="people passing the cameras per day",
    )
    cal.add_argument(
        "--false-alerts-per-day",
        type=float,
        required=True,
        metavar="K",
        help="false alerts per day the deployment accepts",
    )
    cal.add_argument(
        "--watchlist-size", type=int, required=True, metavar="M", help="people on the watchlist"
    )
    cal.add_argument(
        "--write",
        metavar="CONFIG",
        help="set matching.threshold in this TOML config (the rest is kept)",
    )
    cal.add_argument(
        "--config",
        help="config whose models are measured (default: --write's, else lfr's defaults)",
    )
    cal.add_argument(
        "--dataset",
        help="<person>/<image> folder to measure on (default: "
        "$LFR_EVAL_DATA, else shared/data/lfw-dev beside the repository)",
    )
    cal.add_argument(
        "--enrol-images",
        type=int,
        default=1,
        metavar="K",
        help="photos per person on the watchlist (default 1): more photos, more chance likenesses",
    )
    cal.add_argument("--seed", type=int, default=1, help="draw seed (default 1)")
    _add_crowd_weight(cal)
    _add_fix_labels(cal)
    _add_output_options(cal)
    cal.set_defaults(func=cmd_calibrate)
