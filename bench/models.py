"""CPU cost of each model variant, measured side by side: onnxruntime's graph optimisation levels
and the int8 copies tools/quantize_models.py writes.

    PYTHONPATH=. .venv/bin/python bench/models.py [--int8 DIR] [--rounds 7] [--json]

One onnxruntime thread per session (lfr's default). The variants take turns within each round, so
load from other jobs on the machine falls on all of them alike; the figure is the median over
rounds. SFace: milliseconds per face embedded as it is (batch 1) and with its mirror (batch 2, the
flip). YuNet: milliseconds per 960x540 frame.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lfr.vision.models import BUNDLED_DETECTOR, BUNDLED_EMBEDDER, resolve_model
from lfr.vision.onnx import create_session

LEVELS = ("disable", "basic", "extended", "all")


def runner(path: Path, level: str) -> Callable[[np.ndarray], object]:
    session = create_session(path, 1, optimization=level)  # type: ignore[arg-type]
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", type=Path, metavar="DIR",
                        help="folder with sface-int8.onnx and yunet-int8.onnx")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per variant and round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sface, yunet = resolve_model(None, BUNDLED_EMBEDDER), resolve_model(None, BUNDLED_DETECTOR)
    variants: dict[str, tuple[Path, Path, str]] = {
        f"fp32, optimisation {level}": (sface, yunet, level) for level in LEVELS}
    if args.int8:
        variants["int8, optimisation all"] = (args.int8 / "sface-int8.onnx",
                                              args.int8 / "yunet-int8.onnx", "all")
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 255, (1, 3, 112, 112)).astype(np.float32)
    pair = np.concatenate([face, face[:, :, :, ::-1]])
    frame = rng.uniform(0, 255, (1, 3, 544, 960)).astype(np.float32)
    jobs = {}
    for name, (s, y, level) in variants.items():
        embed, detect = runner(s, level), runner(y, level)
        jobs[name] = {"sface ms/face": lambda e=embed: e(face),
                      "sface+flip ms/face": lambda e=embed: e(pair),
                      "yunet ms/frame 960x540": lambda d=detect: d(frame)}
    times: dict[str, dict[str, list[float]]] = {n: {} for n in jobs}
    for round_ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, calls in jobs.items():
            for what, call in calls.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    call()
                if round_:
                    times[name].setdefault(what, []).append(
                        (time.perf_counter() - start) / args.calls * 1000)
    result = {name: {what: round(statistics.median(v), 2) for what, v in rows.items()}
              for name, rows in times.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    columns = list(next(iter(result.values())))
    print(f"{'':26s}" + "".join(f"{c:>24s}" for c in columns))
    for name, row in result.items():
        print(f"{name:26s}" + "".join(f"{row[c]:24.2f}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
