"""Write int8 (static, QDQ) copies of lfr's bundled SFace and YuNet, calibrated on lfw-dev faces.

    PYTHONPATH=. .venv/bin/python tools/quantize_models.py --out ~/lfr-models \\
        --dataset ../shared/data/lfw-dev --faces 300

writes ``sface-int8.onnx`` and ``yunet-int8.onnx`` into ``--out`` (never into the repository or the
shared data folder) and prints the config lines that use them:

    [embedder]
    model = "/home/me/lfr-models/sface-int8.onnx"
    [detector]
    model = "/home/me/lfr-models/yunet-int8.onnx"

A watchlist bundle names the model file it was built with (``sface@<hash>``): rebuild it with the
new config. Measure before deploying (``lfr eval verify`` / ``lfr eval identify --config``);
docs/models.md has the figures on lfw-dev.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from lfr.eval.dataset import choose_face
from lfr.eval.identify import list_people
from lfr.vision.defaults import default_analyzer
from lfr.vision.models import BUNDLED_DETECTOR, BUNDLED_EMBEDDER, converted_bundled_model
from lfr.vision.quantize import quantize_model, sface_inputs, yunet_mosaics

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def calibration_images(dataset: Path, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` photos of distinct people, drawn with ``seed`` (one per person: variety)."""
    people = list_people(dataset)
    names = sorted(people)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(names))[:count]
    images = []
    for i in sorted(chosen):
        rel = people[names[i]][0]
        image = cv2.imread(str(dataset / rel))
        if image is not None:
            images.append((rel, image))
    return images


def refuse_inside(out: Path) -> None:
    """The models are the user's files: never written into the repository or the shared data."""
    resolved = out.expanduser().resolve()
    for folder, what in ((REPO, "the repository"), (SHARED, "the shared data folder")):
        if resolved == folder.resolve() or folder.resolve() in resolved.parents:
            raise SystemExit(f"--out {out}: inside {what} ({folder}); choose a folder of your own")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the int8 models (outside the repository)")
    parser.add_argument("--dataset", type=Path, default=SHARED / "data" / "lfw-dev",
                        help="folder of <person>/<image> photos to calibrate on (default lfw-dev)")
    parser.add_argument("--faces", type=int, default=300,
                        help="photos (one per person) to calibrate on (default 300)")
    parser.add_argument("--models", default="sface,yunet",
                        help="which to quantise: sface, yunet or both (default sface,yunet)")
    parser.add_argument("--method", choices=("minmax", "percentile", "entropy"),
                        default="minmax", help="calibration method (default minmax)")
    parser.add_argument("--keep-float", default="", metavar="NODE,...",
                        help="SFace nodes to leave fp32 (e.g. conv_1_conv2d,conv_14_conv2d)")
    parser.add_argument("--seed", type=int, default=1, help="draw seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    models = {m.strip() for m in args.models.split(",") if m.strip()}
    if not models or models - {"sface", "yunet"}:
        parser.error(f"--models {args.models!r}: expected sface, yunet or sface,yunet")
    if args.faces < 1:
        parser.error("--faces: at least 1")
    if not args.dataset.is_dir():
        parser.error(f"--dataset {args.dataset}: folder not found")
    refuse_inside(args.out)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    images = calibration_images(args.dataset, args.faces, args.seed)
    written: dict[str, str] = {}
    if "sface" in models:
        analyzer = default_analyzer(flip=False)
        aligned = []
        for _, image in images:
            faces = analyzer.detect(image)
            if faces:
                aligned.append(choose_face(faces, image.shape).aligned)
        dst = args.out / "sface-int8.onnx"
        keep = [n.strip() for n in args.keep_float.split(",") if n.strip()]
        quantize_model(converted_bundled_model(BUNDLED_EMBEDDER), dst, sface_inputs(aligned),
                       args.method, keep_float=keep)
        written["sface"] = str(dst.resolve())
    if "yunet" in models:
        dst = args.out / "yunet-int8.onnx"
        quantize_model(converted_bundled_model(BUNDLED_DETECTOR), dst,
                       yunet_mosaics([image for _, image in images]), args.method)
        written["yunet"] = str(dst.resolve())
    result = {"models": written, "calibration_images": len(images), "method": args.method,
              "seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sections = {"sface": "embedder", "yunet": "detector"}
        print(f"calibrated on {len(images)} photos ({args.method}) in {result['seconds']} s")
        for model, path in written.items():
            print(f"[{sections[model]}]\nmodel = {json.dumps(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
