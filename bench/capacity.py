"""Cameras per node without dropped frames, at light, medium and heavy footfall.

    .venv/bin/python bench/capacity.py [--dataset ../shared/data/lfw-dev] [--seconds 20] [--json]

Footage: walk-past videos made from the dataset's faces by tools/make_walkpast.py, 960x540 at
10 fps, with about 1, 3 and 8 people in view at once (light, medium, heavy). For each footfall:

- **cameras per node**: N real-time cameras (the same video, looping, each its own camera) run
  for ``--seconds``; N grows from 1 until a run drops more than 1% of its frames. The figure is
  the largest N that dropped none (0 when even one camera drops).
- **ratio to the plain loop**: frames per second through the whole pipeline, offline (every
  frame, nothing dropped), against a plain single-threaded loop over the same models doing the
  same work on the same frames (decode, detect, align, quality gate, embed every face, search)
  with the same inference threads. Above 1.0 the pipeline overlaps work the loop does in turn.

The machine's CPUs and the inference threads are printed with the table. Numbers depend on the
machine and its load: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import av
import msgspec
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lfr.config import parse_config  # noqa: E402
from lfr.deployment import Deployment  # noqa: E402
from lfr.matching import Matcher  # noqa: E402
from lfr.pipeline.wiring import build_analyzer  # noqa: E402
from lfr.plugins import load_plugins  # noqa: E402
from lfr.watchlist import build_watchlist, load_bundle  # noqa: E402

FOOTFALLS = {"light": 1.0, "medium": 3.0, "heavy": 8.0}  # people in view at once, on average
SIZE, FPS = "960x540", 10.0
DROP_LIMIT = 0.01  # a run dropping more than this share of its frames is past capacity


def make_footage(dataset: Path, out: Path, concurrency: float, seconds: float, seed: int
                 ) -> Path:
    """A walk-past video with about ``concurrency`` people in view, ``seconds`` long."""
    passers = max(4, round(concurrency * seconds / 3.25))  # 3.25 s in view on average
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_walkpast.py"), "--dataset", str(dataset),
         "--out", str(out), "--passers", str(passers), "--watchlisted", str(max(2, passers // 10)),
         "--seed", str(seed), "--fps", str(FPS), "--size", SIZE,
         "--concurrency", str(concurrency)],
        check=True, stdout=subprocess.DEVNULL)
    return out


def config(tmp: Path, footage: Path, cameras: int, realtime: bool, name: str) -> Any:
    return parse_config({
        "name": name, "data_dir": str(tmp / name), "watchlist": {"bundle": str(footage / "wl")},
        "cameras": [{"name": f"cam{i:02d}", "url": str(footage / "walkpast.mp4"),
                     "realtime": realtime, "loop": realtime} for i in range(cameras)],
        "notifiers": [{"kind": "jsonl"}]}, name)


def live_run(tmp: Path, footage: Path, cameras: int, seconds: float) -> dict[str, Any]:
    """``cameras`` real-time cameras for ``seconds``: frames offered, processed, dropped."""
    deployment = Deployment(config(tmp, footage, cameras, True, f"live{cameras}"),
                            load_plugins())

    async def stop_after(view: Any) -> None:
        await anyio.sleep(seconds)
        view.stop()

    summary = anyio.run(lambda: deployment.run(False, [stop_after]))
    emitted = sum(c.get("frames_emitted", 0) for c in summary.cameras.values())
    return {"cameras": cameras, "frames_offered": emitted, "frames_processed": summary.frames,
            "dropped": summary.dropped_frames, "faces": summary.faces,
            "drop_share": summary.dropped_frames / emitted if emitted else 0.0,
            "latency_ms": msgspec.to_builtins(summary.latency_ms)}


def cameras_per_node(tmp: Path, footage: Path, seconds: float, most: int) -> tuple[int, list]:
    runs = []
    best = 0
    for n in range(1, most + 1):
        run = live_run(tmp, footage, n, seconds)
        runs.append(run)
        if run["dropped"] == 0:
            best = n
        if run["drop_share"] > DROP_LIMIT:
            break
    return best, runs


def offline_fps(tmp: Path, footage: Path) -> tuple[float, int, int]:
    """Frames and faces per second through the whole pipeline, every frame of the video."""
    deployment = Deployment(config(tmp, footage, 1, False, "offline"), load_plugins(),
                            offline=True, once=True)
    start = time.perf_counter()
    summary = anyio.run(deployment.run, False)
    seconds = time.perf_counter() - start
    return summary.frames / seconds, summary.frames, summary.faces


def plain_loop_fps(footage: Path, threshold: float) -> float:
    """The same work, one frame after another on one thread: decode, detect, align, gate,
    embed every face that passes, search the watchlist."""
    analyzer = build_analyzer(config(Path(tempfile.gettempdir()), footage, 1, False, "loop"),
                              load_plugins())
    watchlist = load_bundle(footage / "wl")
    matcher = Matcher.for_watchlist(watchlist, threshold)
    frames = 0
    start = time.perf_counter()
    with av.open(str(footage / "walkpast.mp4")) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            found = analyzer.detect(image)
            if found:
                embedded = [f.embedding for f in analyzer.embed(found) if f.embedding is not None]
                if embedded:
                    matcher.rank(np.stack(embedded))
            frames += 1
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "data" / "lfw-dev")
    parser.add_argument("--seconds", type=float, default=20.0, help="each live run (default 20)")
    parser.add_argument("--most", type=int, default=6, help="cameras to try at most (default 6)")
    parser.add_argument("--footfall", choices=sorted(FOOTFALLS), action="append",
                        help="only these (default: all three)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lfr-capacity-") as tmp_name:
        tmp = Path(tmp_name)
        for i, name in enumerate(args.footfall or list(FOOTFALLS)):
            footage = make_footage(args.dataset, tmp / name, FOOTFALLS[name], args.seconds, i + 1)
            analyzer = build_analyzer(config(tmp, footage, 1, False, "enrol"), load_plugins())
            build_watchlist(footage / "watchlist", footage / "wl", analyzer)
            console.print(f"{name}: {FOOTFALLS[name]:g} people in view; live runs of "
                          f"{args.seconds:g} s")
            best, runs = cameras_per_node(tmp, footage, args.seconds, args.most)
            pipeline_fps, frames, faces = offline_fps(tmp, footage)
            loop_fps = plain_loop_fps(footage, 0.5)
            rows.append({"footfall": name, "people_in_view": FOOTFALLS[name],
                         "faces_per_frame": round(faces / max(frames, 1), 2),
                         "cameras_without_drops": best, "runs": runs,
                         "pipeline_fps": round(pipeline_fps, 2),
                         "plain_loop_fps": round(loop_fps, 2),
                         "ratio_to_plain_loop": round(pipeline_fps / loop_fps, 2)})
    config_threads = parse_config({"name": "x"}, "x").pipeline.inference_threads
    result = {"machine": {"cpus": os.cpu_count(), "inference_threads": config_threads,
                          "video": f"{SIZE} at {FPS:g} fps"}, "footfalls": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"cameras per node ({os.cpu_count()} CPUs, {config_threads} inference "
                  f"thread(s) per model, {SIZE} at {FPS:g} fps)", title_justify="left")
    for column in ("footfall", "faces/frame", "cameras, no drops", "pipeline fps",
                   "plain loop fps", "ratio"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["footfall"], str(r["faces_per_frame"]), str(r["cameras_without_drops"]),
                      str(r["pipeline_fps"]), str(r["plain_loop_fps"]),
                      f"{r['ratio_to_plain_loop']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
