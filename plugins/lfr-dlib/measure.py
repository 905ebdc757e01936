"""lfr-dlib beside lfr's default (YuNet + SFace) on lfw-dev: the LFW verification protocol
(lfr.eval.verify.run_verify, 10 folds) and the time per image, measured once for the README.

    python plugins/lfr-dlib/measure.py --pairs ../shared/data/lfw-dev-pairs.tsv \
        --images ../shared/data/lfw-dev --json measure.json

Embeddings are cached in lfr's evaluation cache (``~/.cache/lfr/eval``), keyed by each model's
identity: a second run only scores. Timing runs on ``--timed`` images, one at a time, every
configuration on each image in turn, so the numbers compare (the machine's load affects them all).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import msgspec
import numpy as np
from lfr.eval.dataset import choose_face, default_cache_dir
from lfr.eval.pairs import parse_pairs
from lfr.eval.verify import VerifyReport, run_verify
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer, default_detector
from lfr.vision.quality import QualityGate


class Measured(msgspec.Struct):
    config: str
    accuracy: float
    accuracy_std: float
    tar_at_far_0_001: float
    threshold_mean: float
    threshold_at_far_0_001: float
    failed_images: int
    images: int
    pairs: int
    detect_ms: float  # per image, median over the timed images
    embed_ms: float  # per face (align + embed), median


def analyzers(which: list[str]) -> dict[str, FaceAnalyzer]:
    from lfr_dlib import DlibDetector, DlibEmbedder

    gate = QualityGate(min_face_px=0)
    made: dict[str, FaceAnalyzer] = {}
    for name in which:
        if name == "yunet+sface":
            made[name] = default_analyzer(gate=gate)
        elif name == "dlib-hog+dlib-resnet":
            made[name] = FaceAnalyzer(DlibDetector(), DlibEmbedder(), gate)
        elif name == "yunet+dlib-resnet":
            made[name] = FaceAnalyzer(default_detector(), DlibEmbedder(), gate)
        elif name == "dlib-hog+sface":
            made[name] = FaceAnalyzer(DlibDetector(), default_analyzer().embedder, gate)
        else:
            raise SystemExit(f"unknown configuration {name!r}")
    return made


def timing(
    made: dict[str, FaceAnalyzer], images: list[np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Median ms per image to detect (align included) and per face to embed, per configuration;
    interleaved image by image, so a change in the machine's load touches them all alike."""
    detect: dict[str, list[float]] = {name: [] for name in made}
    embed: dict[str, list[float]] = {name: [] for name in made}
    for image in images:
        for name, analyzer in made.items():
            start = time.perf_counter()
            faces = analyzer.detect(image)
            detect[name].append(time.perf_counter() - start)
            if faces:
                face = choose_face(faces, image.shape)
                start = time.perf_counter()
                analyzer.embedder.embed([face.aligned])
                embed[name].append(time.perf_counter() - start)
    return {
        name: (float(np.median(detect[name]) * 1000), float(np.median(embed[name] or [0]) * 1000))
        for name in made
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument(
        "--configs",
        nargs="*",
        default=["yunet+sface", "dlib-hog+dlib-resnet", "yunet+dlib-resnet"],
    )
    parser.add_argument("--timed", type=int, default=100, help="images timed one by one")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    pairs = parse_pairs(args.pairs)
    paths = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    step = max(1, len(paths) // args.timed)
    sample = [cv2.imread(str(args.images / p), cv2.IMREAD_COLOR) for p in paths[::step]]
    made = analyzers(args.configs)
    reports: dict[str, VerifyReport] = {}
    for name, analyzer in made.items():
        print(f"{name}: embedding {len(paths)} images (cached later)", file=sys.stderr)
        reports[name] = run_verify(args.pairs, args.images, analyzer, cache=default_cache_dir())
    times = timing(made, sample[: args.timed])
    results = []
    for name, report in reports.items():
        detect_ms, embed_ms = times[name]
        result = Measured(
            config=name,
            accuracy=round(report.accuracy, 4),
            accuracy_std=round(report.accuracy_std, 4),
            tar_at_far_0_001=round(report.tar_at_far_0_001, 4),
            threshold_mean=round(report.threshold_mean, 3),
            threshold_at_far_0_001=round(report.threshold_at_far_0_001, 3),
            failed_images=len(report.failed_images),
            images=report.images,
            pairs=report.pairs,
            detect_ms=round(detect_ms, 1),
            embed_ms=round(embed_ms, 1),
        )
        print(msgspec.json.encode(result).decode(), file=sys.stderr, flush=True)
        results.append(result)
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    print(
        "| detector + embedder | accuracy (10 folds) | TAR @ FAR 1e-3 | mean threshold "
        "| threshold @ FAR 1e-3 | images without a face | detect / image | embed / face |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.config} | {r.accuracy:.4f} ± {r.accuracy_std:.4f} | {r.tar_at_far_0_001:.4f} "
            f"| {r.threshold_mean:.3f} | {r.threshold_at_far_0_001:.3f} "
            f"| {r.failed_images} / {r.images} | {r.detect_ms:.0f} ms | {r.embed_ms:.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
