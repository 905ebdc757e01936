"""What a new watchlist costs a running camera: the old way (stop the deployment, start a new one
on the new list, the models kept loaded, as `lfr node` did) against a switch between two frames
(`Deployment.switch_watchlist`, what `lfr node` does now).

    PYTHONPATH=. .venv/bin/python bench/watchlist_switch.py [--clip CLIP] [--fps-cap 10]
        [--before 6] [--after 6] [--repeat 3] [--json]

One live camera (the demo clip, looping in real time, frames capped at ``--fps-cap``) runs on the
list of every demo person for ``--before`` seconds, then changes to the list without Miranda and
runs ``--after`` seconds more. Per way, from the frames the matcher decided (capture-independent
monotonic times):

- ``pause_s``: the longest gap between two consecutive decided frames around the change (from the
  request to 3 s after the new list is in use); ``usual_gap_s``: the longest gap elsewhere (on a
  loaded machine both are mostly the detector's own hiccups);
- ``capture_gap_s``: the same between the capture times of those frames: the time the camera
  was not reading (``usual_capture_gap_s`` elsewhere; frames a live queue dropped show here too);
- ``to_new_list_s``: from the request to the first frame decided on the new list;
- ``frames_lost``: frames the camera would have given meanwhile beyond the usual rate
  (``pause_s - usual_gap_s`` times the capped rate), what a live camera loses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from lfr.config import Config, parse_config
from lfr.deployment import Deployment
from lfr.pipeline.matcher import FrameReport
from lfr.pipeline.wiring import build_analyzer
from lfr.plugins import Registry, load_plugins
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "demo"
LEFT_OUT = "lin_manuel_miranda"


def lists(root: Path) -> tuple[Path, Path]:
    """Every demo person, and all but Miranda (links: nothing copied)."""
    people = SHARED / "people"
    without = root / "people-without"
    without.mkdir()
    for person in sorted(people.iterdir()):
        if person.name != LEFT_OUT:
            (without / person.name).symlink_to(person)
    analyzer = default_analyzer()
    build_watchlist(people, root / "all", analyzer)
    build_watchlist(without, root / "without", analyzer)
    return root / "all", root / "without"


def config_for(root: Path, bundle: Path, clip: Path, fps_cap: float) -> Config:
    return parse_config({
        "name": "bench", "data_dir": str(root / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": "cam", "url": str(clip), "realtime": True, "loop": True,
                     "fps_cap": fps_cap}],
        "notifiers": [{"kind": "jsonl"}]}, "bench")


async def run_recording(deployment: Deployment, frames: list[FrameReport],
                        until: Callable[[], Awaitable[None]]) -> None:
    """Run ``deployment``, its decided frames into ``frames``, until ``until`` returns."""
    subscription = deployment.frames.subscribe(1024)

    async def service(_: Any) -> None:
        await until()
        deployment.stop()

    async with anyio.create_task_group() as tg:
        async def collect() -> None:
            async for report in subscription:
                frames.append(report)

        tg.start_soon(collect)
        await deployment.run(False, [service])
        tg.cancel_scope.cancel()


def gaps(times: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest gap between consecutive times that ends within [start, end], and elsewhere."""
    inside, outside = 0.0, 0.0
    for a, b in itertools.pairwise(times):
        if start <= b <= end:
            inside = max(inside, b - a)
        else:
            outside = max(outside, b - a)
    return inside, outside


def figures(frames: list[FrameReport], requested: float, first_new: float, fps: float
            ) -> dict[str, float]:
    times = [r.decided_mono for r in frames]
    pause, usual = gaps(times, requested, first_new + 3.0)
    # Capture times, placed by when each frame was decided (the window is on that clock).
    captured = [r.faces.frame.mono_time for r in frames]
    capture_gap = usual_capture_gap = 0.0
    for (a, _), (b, decided) in itertools.pairwise(zip(captured, times, strict=True)):
        if requested <= decided <= first_new + 3.0:
            capture_gap = max(capture_gap, b - a)
        else:
            usual_capture_gap = max(usual_capture_gap, b - a)
    return {"pause_s": round(pause, 3), "usual_gap_s": round(usual, 3),
            "capture_gap_s": round(capture_gap, 3),
            "usual_capture_gap_s": round(usual_capture_gap, 3),
            "to_new_list_s": round(first_new - requested, 3),
            "frames_lost": round(max(0.0, pause - usual) * fps, 1)}


async def restart_way(root: Path, registry: Registry, analyzer: FaceAnalyzer,
                      bundles: tuple[Path, Path], args: argparse.Namespace) -> dict[str, float]:
    old_frames: list[FrameReport] = []
    new_frames: list[FrameReport] = []
    first = Deployment(config_for(root / "restart", bundles[0], args.clip, args.fps_cap),
                       registry, analyzer=analyzer)
    requested = 0.0

    async def until() -> None:
        nonlocal requested
        await anyio.sleep(args.before)
        requested = time.monotonic()  # then stopped, drained and started again, as lfr node did

    await run_recording(first, old_frames, until)
    second = Deployment(config_for(root / "restart", bundles[1], args.clip, args.fps_cap),
                        registry, analyzer=analyzer)
    await run_recording(second, new_frames, lambda: anyio.sleep(args.after))
    return figures(old_frames + new_frames, requested, new_frames[0].decided_mono, args.fps_cap)


async def switch_way(root: Path, registry: Registry, analyzer: FaceAnalyzer,
                     bundles: tuple[Path, Path], args: argparse.Namespace) -> dict[str, float]:
    frames: list[FrameReport] = []
    deployment = Deployment(config_for(root / "switch", bundles[0], args.clip, args.fps_cap),
                            registry, analyzer=analyzer)
    switched: dict[str, Any] = {}

    async def until() -> None:
        await anyio.sleep(args.before)
        switched["requested"] = time.monotonic()
        switched["record"] = await deployment.switch_watchlist(bundles[1], version=2)
        await anyio.sleep(args.after)

    await run_recording(deployment, frames, until)
    last_old = switched["record"]["switched"]["after_frames"]["cam"]
    # Frame indices count on over the clip's loops: the first one after the switch point.
    first_new = next(r.decided_mono for r in frames if r.faces.frame.index > last_old)
    result = figures(frames, switched["requested"], first_new, args.fps_cap)
    result["load_s"] = switched["record"]["switched"]["load_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=SHARED / "video" / "short_hamilton_clip.mp4")
    parser.add_argument("--fps-cap", type=float, default=10.0)
    parser.add_argument("--before", type=float, default=6.0, help="seconds on the first list")
    parser.add_argument("--after", type=float, default=6.0, help="seconds on the second list")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way, alternated")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    registry = load_plugins()
    with tempfile.TemporaryDirectory(prefix="lfr-switch-") as tmp:
        root = Path(tmp)
        bundles = lists(root)
        analyzer = build_analyzer(config_for(root, bundles[0], args.clip, args.fps_cap),
                                  registry)
        runs: dict[str, list[dict[str, float]]] = {"restart": [], "switch": []}
        for n in range(args.repeat):  # alternated: both ways see the same machine load
            runs["restart"].append(anyio.run(restart_way, root / f"r{n}", registry, analyzer,
                                             bundles, args))
            runs["switch"].append(anyio.run(switch_way, root / f"s{n}", registry, analyzer,
                                            bundles, args))
    result = {"fps_cap": args.fps_cap, "runs": runs,
              "median": {way: {key: statistics.median(r[key] for r in found)
                               for key in found[0]} for way, found in runs.items()}}
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        for way, found in runs.items():
            for r in found:
                print(way, " ".join(f"{k}={v}" for k, v in r.items()))
        for way, medians in result["median"].items():
            print(f"{way} median", " ".join(f"{k}={v:g}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
