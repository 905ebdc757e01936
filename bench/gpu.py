"""Optional GPU benchmark: YuNet and SFace on CPU (onnxruntime) against a CUDA device.

    python bench/gpu.py [--models DIR] [--repeat N] [--json]

Standalone (numpy, onnxruntime; torch + onnx2torch when onnxruntime has no CUDA provider), so it
runs on a GPU machine without lfr installed. ``--models`` is a folder with lfr's converted fp32
models (``~/.cache/lfr/models`` after any lfr run). CUDA goes through onnxruntime's
CUDAExecutionProvider when present, else through PyTorch (the ONNX graph converted by onnx2torch).
Reports milliseconds per call and the agreement of GPU and CPU outputs (cosine of embeddings).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

DETECT_SIZES = {"640x360": (384, 640), "1280x720": (736, 1280), "1920x1080": (1088, 1920)}
EMBED_BATCHES = (1, 8, 32, 128)


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def ort_runner(path: Path, provider: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def torch_runner(path: Path, half: bool) -> Callable[[np.ndarray], np.ndarray]:
    import onnx
    import torch
    from onnx2torch import convert

    graph = onnx.load(str(path))
    try:
        module = convert(graph)
    except NotImplementedError:
        # onnx2torch lags behind the newest opsets: retry on the graph converted to opset 17.
        module = convert(onnx.version_converter.convert_version(graph, 17))
    model = module.eval().cuda()
    if half:
        model = model.half()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).cuda()
            out = model(t.half() if half else t)
            first = out[0] if isinstance(out, (list, tuple)) else out
            result = first.float().cpu().numpy()  # the copy back synchronises
        return result

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path,
                        default=Path(os.environ.get("LFR_CACHE_DIR", "~/.cache/lfr")).expanduser()
                        / "models")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    yunet = Path(glob.glob(str(args.models / "face_detection_yunet*fp32*.onnx"))[0])
    sface = Path(glob.glob(str(args.models / "face_recognition_sface*fp32*.onnx"))[0])
    rng = np.random.default_rng(0)
    cpu_threads = os.cpu_count() or 1

    backends: dict[str, Callable[[Path], Callable[[np.ndarray], np.ndarray]]] = {
        "cpu-1-thread": lambda p: ort_runner(p, "CPUExecutionProvider", 1),
        f"cpu-{cpu_threads}-threads": lambda p: ort_runner(p, "CPUExecutionProvider", cpu_threads),
    }
    if "CUDAExecutionProvider" in ort.get_available_providers():
        backends["cuda-onnxruntime"] = lambda p: ort_runner(p, "CUDAExecutionProvider", 1)
    else:
        backends["cuda-torch-fp32"] = lambda p: torch_runner(p, half=False)
        backends["cuda-torch-fp16"] = lambda p: torch_runner(p, half=True)

    result: dict[str, object] = {"machine": platform.node(), "cpus": cpu_threads,
                                 "providers": ort.get_available_providers()}
    try:
        import torch

        result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        result["gpu"] = None
    detect: dict[str, dict[str, float]] = {}
    embed: dict[str, dict[str, float]] = {}
    agreement: dict[str, float] = {}
    faces = rng.uniform(0, 255, (max(EMBED_BATCHES), 3, 112, 112)).astype(np.float32)
    reference = ort_runner(sface, "CPUExecutionProvider", 1)(faces[:8])
    errors: dict[str, str] = {}
    for name, make in backends.items():
        try:
            det = make(yunet)
            frames = {size: rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
                      for size, (h, w) in DETECT_SIZES.items()}
            detect[name] = {size: round(timed(lambda x=x, det=det: det(x), args.repeat), 3)
                            for size, x in frames.items()}
        except Exception as exc:  # a backend that cannot run a model is reported, not fatal
            errors[f"{name} yunet"] = f"{type(exc).__name__}: {exc}"
        try:
            emb = make(sface)
        except Exception as exc:
            errors[f"{name} sface"] = f"{type(exc).__name__}: {exc}"
            continue
        embed[name] = {
            f"batch {b}": round(timed(lambda b=b, emb=emb: emb(faces[:b]), args.repeat) / b, 3)
            for b in EMBED_BATCHES}
        out = emb(faces[:8])
        cos = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(
            reference, axis=1)
        agreement[name] = round(float(cos.min()), 5)
    result.update({"detect_ms_per_frame": detect, "embed_ms_per_face": embed,
                   "min_cosine_vs_cpu": agreement, "errors": errors})
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['gpu']} / {cpu_threads} CPUs; providers {result['providers']}")
    print("YuNet ms per frame:")
    for name, row in detect.items():
        print(f"  {name:18s} " + "  ".join(f"{k} {v:8.2f}" for k, v in row.items()))
    print("SFace ms per face:")
    for name, row in embed.items():
        print(f"  {name:18s} " + "  ".join(f"{k} {v:7.3f}" for k, v in row.items())
              + f"   min cosine vs CPU {agreement[name]}")
    for what, error in errors.items():
        print(f"not measured: {what}: {error[:200]}")


if __name__ == "__main__":
    main()
