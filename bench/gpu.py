"""GPU benchmark: lfr's YuNet and SFace on onnxruntime's CUDA execution provider against the CPU.

    PYTHONPATH=. .venv/bin/python bench/gpu.py [--repeat N] [--int8 DIR] [--json]

Runs the models through lfr's own session code (``lfr.vision.onnx.create_session``, the path a
deployment with ``providers = ["CUDAExecutionProvider", ...]`` takes), never through PyTorch. The
CUDA provider needs onnxruntime-gpu installed in place of onnxruntime (docs/gpu.md); where it is
missing the CPU rows are still measured and the CUDA rows say why they are absent. Reports
milliseconds per frame (YuNet, random frames of three sizes), per face (SFace, batches of 1 to
128), and the agreement of CUDA and CPU embeddings (lowest cosine). ``--int8 DIR``: also time the
int8 models tools/quantize_models.py wrote there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lfr.vision.models import BUNDLED_DETECTOR, BUNDLED_EMBEDDER, ModelError, resolve_model
from lfr.vision.onnx import create_session

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
DETECT_SIZES = {"640x360": (384, 640), "1920x1080": (1088, 1920), "3840x2160": (2176, 3840)}
EMBED_BATCHES = (1, 8, 32, 128)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Milliseconds per call, after two warm-up calls (allocations, CUDA kernel selection)."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def runner(path: Path, providers: list[str], threads: int) -> Callable[[np.ndarray], np.ndarray]:
    session = create_session(path, threads, providers)
    if providers[0] not in session.get_providers():
        raise ModelError(f"{providers[0]} did not start (session runs on "
                         f"{session.get_providers()})")
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--int8", type=Path, metavar="DIR",
                        help="also time sface-int8.onnx / yunet-int8.onnx from this folder")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    models = {"fp32": (resolve_model(None, BUNDLED_DETECTOR),
                       resolve_model(None, BUNDLED_EMBEDDER))}
    if args.int8:
        models["int8"] = (args.int8 / "yunet-int8.onnx", args.int8 / "sface-int8.onnx")
    cpus = os.cpu_count() or 1
    available = ort.get_available_providers()
    backends = {"cpu, 1 thread": ([CPU], 1), f"cpu, {cpus} threads": ([CPU], cpus)}
    errors: dict[str, str] = {}
    if CUDA in available:
        backends["cuda"] = ([CUDA], 1)
    else:
        errors["cuda"] = (f"{CUDA} not available in onnxruntime {ort.__version__} (providers "
                          f"{available}): install onnxruntime-gpu in its place (docs/gpu.md)")
    rng = np.random.default_rng(0)
    frames = {size: rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
              for size, (h, w) in DETECT_SIZES.items()}
    faces = rng.uniform(0, 255, (max(EMBED_BATCHES), 3, 112, 112)).astype(np.float32)
    detect: dict[str, dict[str, float]] = {}
    embed: dict[str, dict[str, float]] = {}
    agreement: dict[str, float] = {}
    reference = runner(models["fp32"][1], [CPU], 1)(faces[:8])
    for variant, (yunet, sface) in models.items():
        for backend, (providers, threads) in backends.items():
            row = f"{backend}, {variant}"
            try:
                det = runner(yunet, providers, threads)
                detect[row] = {size: round(timed(lambda x=x, det=det: det(x), args.repeat), 3)
                               for size, x in frames.items()}
                emb = runner(sface, providers, threads)
                embed[row] = {
                    f"batch {b}": round(timed(lambda b=b, emb=emb: emb(faces[:b]), args.repeat) / b,
                                        3)
                    for b in EMBED_BATCHES}
            except ModelError as exc:  # a backend that cannot run a model is reported, not fatal
                errors[row] = str(exc)
                continue
            out = emb(faces[:8])
            cos = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(
                reference, axis=1)
            agreement[row] = round(float(cos.min()), 5)
    result = {"machine": platform.node(), "cpus": cpus, "onnxruntime": ort.__version__,
              "providers": available, "detect_ms_per_frame": detect, "embed_ms_per_face": embed,
              "min_cosine_vs_cpu_fp32": agreement, "errors": errors}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{cpus} CPUs; onnxruntime {ort.__version__}, providers {available}")
    print("YuNet ms per frame:")
    for name, times in detect.items():
        print(f"  {name:24s} " + "  ".join(f"{k} {v:8.2f}" for k, v in times.items()))
    print("SFace ms per face:")
    for name, times in embed.items():
        print(f"  {name:24s} " + "  ".join(f"{k} {v:7.3f}" for k, v in times.items())
              + f"   min cosine vs CPU fp32 {agreement[name]}")
    for what, error in errors.items():
        print(f"not measured: {what}: {error[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
