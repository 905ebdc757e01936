"""Large frames: faces found and milliseconds per frame for full-size detection, downscaled
detection, the scale chosen from the smallest face, and tiles, on upscaled walk-past video.

    PYTHONPATH=. .venv/bin/python tools/make_walkpast.py --dataset ../shared/data/lfw-dev \\
        --out /tmp/walk --passers 40 --watchlisted 5 --size 960x540 --max-face 28 40 --fps 5 \\
        --duration 3 4 --concurrency 4
    PYTHONPATH=. .venv/bin/python bench/large_frames.py --walk /tmp/walk [--step 4] [--json]

Each decoded frame is upscaled (OpenCV, bilinear) to 1920x1080 and 3840x2160 with its ground-truth
boxes, then detected by each strategy with one onnxruntime thread. A truth face counts as found
when a detection's centre lies inside its box (one detection per face); detections on no truth
face are counted as extra. Upscaling is not timed. The smallest face of a size is the walk-past's
smallest face at 960x540 (13 px) scaled up: the ``min_face_px`` a camera like that would set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from lfr.eval.video import load_truth
from lfr.vision.detect import YuNetDetector
from lfr.vision.models import BUNDLED_DETECTOR, resolve_model

SIZES = {"1920x1080": (1920, 1080), "3840x2160": (3840, 2160)}


def strategies(width: int, min_face: float) -> dict[str, dict[str, Any]]:
    """Detector settings per strategy, for frames ``width`` wide."""
    return {
        "full size": {"max_side": width},
        "downscaled to 1920": {"max_side": 1920},
        "downscaled to 960": {"max_side": 960},
        f"min_face_px {min_face:g}": {"max_side": width, "min_face_px": min_face},
        f"min_face_px {min_face:g}, tiles of 960": {"max_side": 960, "min_face_px": min_face},
    }


def frames_of(video: Path, step: int) -> list[tuple[int, np.ndarray]]:
    with av.open(str(video)) as container:
        return [(i, f.to_ndarray(format="bgr24"))
                for i, f in enumerate(container.decode(video=0)) if i % step == 0]


def count_found(truth: list[tuple[float, float, float, float]], boxes: list[tuple[float, ...]]
                ) -> tuple[int, int]:
    """(truth faces found, detections on no truth face): each detection claims one face."""
    free = list(truth)
    extra = 0
    for x, y, w, h in boxes:
        cx, cy = x + w / 2, y + h / 2
        hit = next((t for t in free if t[0] <= cx <= t[0] + t[2] and t[1] <= cy <= t[1] + t[3]),
                   None)
        if hit is None:
            extra += 1
        else:
            free.remove(hit)
    return len(truth) - len(free), extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walk", type=Path, required=True,
                        help="folder made by tools/make_walkpast.py (walkpast.mp4, truth.json)")
    parser.add_argument("--step", type=int, default=4, help="use every N-th frame (default 4)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    truth = load_truth(args.walk / "truth.json")
    frames = frames_of(args.walk / "walkpast.mp4", args.step)
    native_h, native_w = frames[0][1].shape[:2]
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    for passer in truth.passers:
        for frame, x, y, w, h, visible in passer.boxes:
            if visible:
                boxes.setdefault(frame, []).append((x, y, w, h))
    smallest = min(b[2] for faces in boxes.values() for b in faces)
    model = resolve_model(None, BUNDLED_DETECTOR)
    rows = []
    for size, (width, height) in SIZES.items():
        factor = width / native_w
        min_face = float(round(smallest * factor))
        big = [(i, cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR))
               for i, f in frames]
        # The strategies take turns frame by frame, so load from other jobs falls on all alike.
        detectors = {name: YuNetDetector(model, **settings)
                     for name, settings in strategies(width, min_face).items()}
        tally = {name: {"found": 0, "faces": 0, "extra": 0, "seconds": 0.0} for name in detectors}
        for detector in detectors.values():
            detector.detect(big[0][1])  # warm-up
        for index, image in big:
            scaled = [tuple(v * factor for v in b) for b in boxes.get(index, [])]
            for name, detector in detectors.items():
                start = time.perf_counter()
                detections = detector.detect(image)
                tally[name]["seconds"] += time.perf_counter() - start
                hit, more = count_found(scaled, [d.box for d in detections])
                tally[name]["found"] += hit
                tally[name]["faces"] += len(scaled)
                tally[name]["extra"] += more
        for name, detector in detectors.items():
            plan, t = detector.plan(width, height), tally[name]
            rows.append({"size": size, "strategy": name, "scale": round(plan.scale, 3),
                         "tiles": len(plan.tiles), "faces": t["faces"], "found": t["found"],
                         "recall": round(t["found"] / max(t["faces"], 1), 4),
                         "extra": t["extra"], "ms_per_frame": round(t["seconds"] / len(big) * 1000,
                                                                    1)})
            if not args.json:
                r = rows[-1]
                print(f"{size:10s} {name:34s} scale {r['scale']:5.3f} tiles {r['tiles']:2d}  "
                      f"found {r['found']:4d}/{r['faces']:4d} ({r['recall']:.3f})  extra "
                      f"{r['extra']:3d}  {r['ms_per_frame']:8.1f} ms/frame", flush=True)
    if args.json:
        print(json.dumps({"frames": len(frames), "native": f"{native_w}x{native_h}",
                          "smallest_face_native_px": smallest, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
