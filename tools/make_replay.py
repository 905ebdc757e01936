"""Compute a replay file offline: every frame's faces (boxes, landmarks, scores, sharpness) and
embeddings, with the real detector and embedder, from a video made from a dataset.

The replay detector (``[detector] kind = "replay"``) plays it back instead of running the models,
so tens of nodes and hundreds of cameras fit on one machine (``bench/nodes.py --replay``). This is
an offline evaluation artefact from a dataset the user points at (a walk-past composed from
lfw-dev by tools/make_walkpast.py): lfr never records one from a live run.

    .venv/bin/python tools/make_walkpast.py --dataset ../shared/data/lfw-dev --out /tmp/walk \\
        --passers 100 --watchlisted 10 --seed 5
    .venv/bin/python tools/make_replay.py /tmp/walk/walkpast.mp4 -o /tmp/walk/walkpast.replay.npz \\
        --config /tmp/walk/walkpast.toml

``--config`` picks the detector and embedder (its ``[detector]`` and ``[embedder]``; lfr's
defaults without it): a watchlist bundle enrolled with that embedder matches the replay.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import av  # noqa: E402

from lfr.vision.align import align_face  # noqa: E402
from lfr.vision.analyzer import FaceAnalyzer  # noqa: E402
from lfr.vision.quality import sharpness_of  # noqa: E402
from lfr.vision.replay import StoredFace, save_replay  # noqa: E402


def make_replay(video: Path | str, analyzer: FaceAnalyzer, out: Path,
                detector_kind: str = "") -> dict[str, Any]:
    """Decode ``video`` (as lfr's camera does: PyAV, BGR) and store every frame's faces."""
    if "://" in str(video) or not Path(video).is_file():
        raise ValueError(f"{video}: a replay is made from a dataset's video file, never from a "
                         "live stream or a camera")
    if analyzer.detector.name == "replay":
        raise ValueError("a replay is made with the real models, not from another replay")
    video = Path(video)
    frames: list[list[StoredFace]] = []
    started = time.perf_counter()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0.0)
        size = (stream.codec_context.width, stream.codec_context.height)
        for picture in container.decode(stream):
            image = picture.to_ndarray(format="bgr24")
            found = analyzer.detector.detect(image)
            aligned = [align_face(image, d.landmarks) for d in found]
            vectors = analyzer.embedder.embed(aligned)  # every face: the gate decides at run time
            frames.append([StoredFace(detection=d, sharpness=sharpness_of(a), embedding=v)
                           for d, a, v in zip(found, aligned, vectors, strict=True)])
    if not frames:
        raise ValueError(f"{video}: no frame could be decoded")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_replay(out, video=video.name, detector=detector_kind or analyzer.detector.name,
                embedder=analyzer.embedder.name, fps=fps, size=size, faces=frames,
                dim=int(analyzer.embedder.dim))
    return {"replay": str(out), "video": str(video), "frames": len(frames),
            "faces": sum(len(f) for f in frames), "embedder": analyzer.embedder.name,
            "dim": int(analyzer.embedder.dim), "fps": fps,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="a video made from a dataset (make_walkpast.py)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the replay file (.npz)")
    parser.add_argument("--config", type=Path, help="its [detector] and [embedder] (default: "
                        "lfr's)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    from lfr.cli.plugins import load_registry
    from lfr.config import default_config, load_config
    from lfr.pipeline.wiring import build_analyzer

    config = load_config(args.config) if args.config else default_config("replay")
    try:
        summary = make_replay(args.video, build_analyzer(config, load_registry()), args.out,
                              str(config.detector.get("kind", "")))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['replay']}: {summary['frames']} frames, {summary['faces']} faces, "
              f"embedder {summary['embedder']} ({summary['dim']}), {summary['seconds']} s")


if __name__ == "__main__":
    main()
