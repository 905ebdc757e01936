"""Per-stage and end-to-end timings on the demo clip.

    .venv/bin/python bench/pipeline.py [--clip PATH] [--frames N] [--gallery N] [--json]

Stages are timed one after another on one thread (decode, detect, align, embed, match), then the
whole pipeline runs the clip through the actors (offline: no frame dropped) for frames/s and
faces/s. Capture-to-decision latency is a live figure (bench/soak.py): an offline file is captured
on its own clock and its frames wait in a blocking queue by design. Numbers depend on the machine;
compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lfr.vision.align import align_face  # noqa: E402
from lfr.vision.defaults import default_analyzer  # noqa: E402
from lfr.watchlist.index import ExactIndex  # noqa: E402

CLIP = REPO.parent / "shared" / "data" / "demo" / "video" / "short_hamilton_clip.mp4"


def ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    arr = np.array(samples) * 1000
    return {"n": len(arr), "mean": round(float(arr.mean()), 2),
            "p50": round(float(np.percentile(arr, 50)), 2),
            "p95": round(float(np.percentile(arr, 95)), 2)}


def stage_timings(clip: Path, max_frames: int, gallery: int) -> dict[str, object]:
    analyzer = default_analyzer()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(gallery, analyzer.embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ExactIndex()
    index.build(vectors)
    times: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "align", "embed", "match")}
    frames = faces = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        decoder = container.decode(stream)
        while frames < max_frames:
            t0 = time.perf_counter()
            try:
                frame = next(decoder)
            except StopIteration:
                break
            image = frame.to_ndarray(format="bgr24")
            t1 = time.perf_counter()
            detections = analyzer.detector.detect(image)
            t2 = time.perf_counter()
            times["decode"].append(t1 - t0)
            times["detect"].append(t2 - t1)
            frames += 1
            for det in detections:
                t3 = time.perf_counter()
                aligned = align_face(image, det.landmarks)
                t4 = time.perf_counter()
                embedding = analyzer.embedder.embed([aligned])
                t5 = time.perf_counter()
                index.search(embedding, 5)
                t6 = time.perf_counter()
                times["align"].append(t4 - t3)
                times["embed"].append(t5 - t4)
                times["match"].append(t6 - t5)
                faces += 1
    return {"frames": frames, "faces": faces, "gallery": gallery,
            "stages_ms": {k: ms(v) for k, v in times.items()}}


def end_to_end(clip: Path) -> dict[str, object]:
    import anyio

    from lfr.config import parse_config
    from lfr.deployment import Deployment
    from lfr.plugins import load_plugins
    from lfr.vision.defaults import default_analyzer as make
    from lfr.watchlist import build_watchlist

    people = REPO.parent / "shared" / "data" / "demo" / "people"
    with tempfile.TemporaryDirectory() as tmp:
        build_watchlist(people, Path(tmp) / "wl", make())
        config = parse_config({
            "name": "bench", "data_dir": str(Path(tmp) / "data"),
            "watchlist": {"bundle": str(Path(tmp) / "wl")},
            "cameras": [{"name": "clip", "url": str(clip)}], "notifiers": [{"kind": "jsonl"}]})
        deployment = Deployment(config, load_plugins(), offline=True, once=True)
        start = time.perf_counter()
        summary = anyio.run(deployment.run, False)
        seconds = time.perf_counter() - start
    return {"frames": summary.frames, "faces": summary.faces, "seconds": round(seconds, 2),
            "frames_per_s": round(summary.frames / seconds, 1),
            "faces_per_s": round(summary.faces / seconds, 1),
            "alerts": summary.alerts_by_person}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--gallery", type=int, default=10_000, help="synthetic gallery size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"stages": stage_timings(args.clip, args.frames, args.gallery),
              "pipeline": end_to_end(args.clip)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    stages = result["stages"]
    print(f"stages over {stages['frames']} frames, {stages['faces']} faces "
          f"(gallery {stages['gallery']}):")
    for name, s in stages["stages_ms"].items():
        if s["n"]:
            print(f"  {name:7s} mean {s['mean']:7.2f} ms  p50 {s['p50']:7.2f}  p95 {s['p95']:7.2f}"
                  f"  (n={s['n']})")
    per_frame = sum(s.get("mean", 0) * s["n"] for s in stages["stages_ms"].values()) / max(
        1, stages["frames"])
    print(f"  sum of stages per frame: {per_frame:.1f} ms")
    pipe = result["pipeline"]
    print(f"pipeline: {pipe['frames']} frames, {pipe['faces']} faces in {pipe['seconds']} s = "
          f"{pipe['frames_per_s']} frames/s, {pipe['faces_per_s']} faces/s")
    print(f"  ratio pipeline/serial: {per_frame / (1000 / max(pipe['frames_per_s'], 1e-9)):.2f}x")


if __name__ == "__main__":
    main()
