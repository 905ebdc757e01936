"""Cameras per node without dropped frames, at light, medium and heavy footfall.

    .venv/bin/python bench/capacity.py [--dataset ../shared/data/lfw-dev] [--seconds 20] [--json]
        [--footfall light|medium|heavy]... [--embedding per_person|every_face]... [--live-only]

Footage: walk-past videos made from the dataset's faces by tools/make_walkpast.py, 960x540 at
10 fps, with about 1, 3 and 8 people in view at once (light, medium, heavy). For each footfall:

- **cameras per node**: N real-time cameras (the same video, looping, each its own camera) run
  for ``--seconds``; N grows from 1 until a run drops more than 1% of its frames. The figure is
  the largest N that dropped none (0 when even one camera drops).
- **ratio to the plain loop**: frames per second through the whole pipeline, offline (every
  frame, nothing dropped), against a plain single-threaded loop over the same models doing the
  same work on the same frames (decode, detect, align, quality gate, the same embedding plan,
  embed, decide with the alert policy) with the same inference threads. Above 1.0 the pipeline
  overlaps work the loop does in turn. The loop also gives the time of each stage per frame.
- **live latency**: per live run, dropped frames and capture-to-decision latency p50/p95/max.

``--embedding`` chooses which faces are embedded (``[pipeline.embedding] policy``; default: the
config's default), once per footfall each, so the two can be compared side by side.

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
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lfr.config import parse_config  # noqa: E402
from lfr.deployment import Deployment  # noqa: E402
from lfr.matching import Matcher  # noqa: E402
from lfr.messages import Face  # noqa: E402
from lfr.pipeline.detector import NO_CROP  # noqa: E402
from lfr.pipeline.embedding_plan import EmbeddingPlanner, PlannedFace, TrackNews  # noqa: E402
from lfr.pipeline.wiring import build_analyzer, camera_embedder  # noqa: E402
from lfr.plugins import load_plugins  # noqa: E402
from lfr.policy import AlertPolicy  # noqa: E402
from lfr.vision.analyzer import FaceAnalyzer  # noqa: E402
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


def config(tmp: Path, footage: Path, cameras: int, realtime: bool, name: str,
           embedding: str | None = None) -> Any:
    pipeline = {"embedding": {"policy": embedding}} if embedding else {}
    return parse_config({
        "name": name, "data_dir": str(tmp / name), "watchlist": {"bundle": str(footage / "wl")},
        "cameras": [{"name": f"cam{i:02d}", "url": str(footage / "walkpast.mp4"),
                     "realtime": realtime, "loop": realtime} for i in range(cameras)],
        "notifiers": [{"kind": "jsonl"}], "pipeline": pipeline}, name)


def live_run(tmp: Path, footage: Path, cameras: int, seconds: float, embedding: str | None
             ) -> dict[str, Any]:
    """``cameras`` real-time cameras for ``seconds``: frames offered, processed, dropped."""
    name = f"live{cameras}-{embedding}-{time.monotonic_ns()}"
    deployment = Deployment(config(tmp, footage, cameras, True, name, embedding),
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


def cameras_per_node(tmp: Path, footage: Path, seconds: float, most: int,
                     embedding: str | None) -> tuple[int, list]:
    runs = []
    best = 0
    for n in range(1, most + 1):
        run = live_run(tmp, footage, n, seconds, embedding)
        runs.append(run)
        if run["dropped"] == 0:
            best = n
        if run["drop_share"] > DROP_LIMIT:
            break
    return best, runs


def offline_fps(tmp: Path, footage: Path, embedding: str | None) -> tuple[float, int, int]:
    """Frames and faces per second through the whole pipeline, every frame of the video."""
    name = f"offline-{embedding}-{time.monotonic_ns()}"
    deployment = Deployment(config(tmp, footage, 1, False, name, embedding), load_plugins(),
                            offline=True, once=True)
    start = time.perf_counter()
    summary = anyio.run(deployment.run, False)
    seconds = time.perf_counter() - start
    return summary.frames / seconds, summary.frames, summary.faces


def plain_loop(footage: Path, embedding: str | None) -> dict[str, Any]:
    """The same work, one frame after another on one thread: decode, detect, align, gate, plan,
    embed the chosen faces, decide (the alert policy, telling the planner what it decided).
    Returns frames per second and the milliseconds per frame of each stage."""
    cfg = config(Path(tempfile.gettempdir()), footage, 1, False, "loop", embedding)
    analyzer = build_analyzer(cfg, load_plugins())
    watchlist = load_bundle(footage / "wl")
    matcher = Matcher.for_watchlist(watchlist, cfg.matching.threshold)
    # The embedder a deployment's cameras use (the flip only near the threshold, by default).
    analyzer = FaceAnalyzer(analyzer.detector,
                            camera_embedder(analyzer.embedder, watchlist, matcher), analyzer.gate)
    policy = AlertPolicy.configured(cfg.matching, matcher.rank)
    planner = EmbeddingPlanner(cfg.pipeline.embedding, cfg.matching.threshold,
                               cfg.matching.tracking.decision_px)
    stages = dict.fromkeys(("decode", "detect", "plan", "embed", "decide"), 0.0)
    frames = embedded = 0
    start = time.perf_counter()
    with av.open(str(footage / "walkpast.mp4")) as container:
        mark = time.perf_counter()
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            mark = _lap(stages, "decode", mark)
            found = analyzer.detect(image)
            mark = _lap(stages, "detect", mark)
            chosen = planner.plan(frames, [PlannedFace(f.detection.box, f.quality.score,
                                                       f.quality.passed) for f in found])
            mark = _lap(stages, "plan", mark)
            picked = [f for f, c in zip(found, chosen, strict=True) if c]
            vectors = iter(analyzer.embed(picked) if picked else [])
            found = [next(vectors) if c else f for f, c in zip(found, chosen, strict=True)]
            embedded += len(picked)
            mark = _lap(stages, "embed", mark)
            faces = [Face(camera="cam00", frame_index=frames, wall_time=0.0,
                          mono_time=frames / FPS, detection=f.detection, quality=f.quality.score,
                          embedding=f.embedding, crop=NO_CROP)
                     for f in found if f.quality.passed]
            step = policy.observe("cam00", faces, frames / FPS)
            planner.news([TrackNews(frames, f.detection.box, s.decided, s.judged, s.evidence,
                                    s.best_score) for f, s in zip(faces, step.states, strict=True)])
            mark = _lap(stages, "decide", mark)
            frames += 1
    seconds = time.perf_counter() - start
    return {"fps": frames / seconds, "embedded_per_frame": round(embedded / max(frames, 1), 2),
            "stage_ms_per_frame": {k: round(1000 * v / max(frames, 1), 1)
                                   for k, v in stages.items()}}


def _lap(stages: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    stages[stage] += now - since
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "data" / "lfw-dev")
    parser.add_argument("--seconds", type=float, default=20.0, help="each live run (default 20)")
    parser.add_argument("--most", type=int, default=6, help="cameras to try at most (default 6)")
    parser.add_argument("--footfall", choices=sorted(FOOTFALLS), action="append",
                        help="only these (default: all three)")
    parser.add_argument("--embedding", choices=("per_person", "every_face"), action="append",
                        help="which faces are embedded (default: the config's default)")
    parser.add_argument("--live-only", action="store_true",
                        help="only the live runs (no offline throughput, no plain loop)")
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
            for embedding in args.embedding or [None]:
                label = embedding or parse_config({"name": "x"}, "x").pipeline.embedding.policy
                console.print(f"{name}: {FOOTFALLS[name]:g} people in view, {label}; live runs "
                              f"of {args.seconds:g} s")
                best, runs = cameras_per_node(tmp, footage, args.seconds, args.most, embedding)
                row: dict[str, Any] = {"footfall": name, "embedding": label,
                                       "people_in_view": FOOTFALLS[name],
                                       "cameras_without_drops": best, "runs": runs}
                if not args.live_only:
                    pipeline_fps, frames, faces = offline_fps(tmp, footage, embedding)
                    loop = plain_loop(footage, embedding)
                    row.update({"faces_per_frame": round(faces / max(frames, 1), 2),
                                "pipeline_fps": round(pipeline_fps, 2),
                                "plain_loop_fps": round(loop["fps"], 2),
                                "ratio_to_plain_loop": round(pipeline_fps / loop["fps"], 2),
                                "embedded_per_frame": loop["embedded_per_frame"],
                                "stage_ms_per_frame": loop["stage_ms_per_frame"]})
                rows.append(row)
    config_threads = parse_config({"name": "x"}, "x").pipeline.threads
    result = {"machine": {"cpus": os.cpu_count(), "inference_threads": config_threads,
                          "video": f"{SIZE} at {FPS:g} fps"}, "footfalls": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"cameras per node ({os.cpu_count()} CPUs, {config_threads} inference "
                  f"thread(s) per model, {SIZE} at {FPS:g} fps)", title_justify="left")
    for column in ("footfall", "embedding", "faces/frame", "embedded/frame",
                   "cameras, no drops", "1 camera: dropped, latency p50/p95/max ms",
                   "pipeline fps", "plain loop fps", "ratio", "loop ms/frame: detect, embed"):
        table.add_column(column)
    for r in rows:
        one = r["runs"][0]
        lat = one["latency_ms"]
        stages = r.get("stage_ms_per_frame", {})
        table.add_row(
            r["footfall"], r["embedding"], str(r.get("faces_per_frame", "-")),
            str(r.get("embedded_per_frame", "-")), str(r["cameras_without_drops"]),
            f"{one['dropped']}, {lat['p50']}/{lat['p95']}/{lat['max']}",
            str(r.get("pipeline_fps", "-")), str(r.get("plain_loop_fps", "-")),
            f"{r['ratio_to_plain_loop']:.2f}x" if "ratio_to_plain_loop" in r else "-",
            f"{stages['detect']}, {stages['embed']}" if stages else "-")
    Console().print(table)


if __name__ == "__main__":
    main()
