"""Static int8 quantisation (QDQ) of lfr's ONNX models, calibrated on real faces.

onnxruntime's ``quantize_static`` runs the fp32 model over calibration inputs, records the range of
every activation and writes a model with QuantizeLinear/DequantizeLinear pairs around int8 weights
(per output channel) and uint8 activations. The calibration inputs must look like what the model
sees live: SFace gets aligned 112x112 RGB faces (and their mirrors, as the flip feeds it); YuNet
gets frames with faces from large to small (a mosaic of photos on a 640x640 canvas).

tools/quantize_models.py is the command; the files it writes are used by path
(``[embedder] model = ...``, ``[detector] model = ...``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnx

from lfr.vision.models import ModelError

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
MOSAIC_SIDE = 640
MOSAIC_GRIDS = (1, 2, 3, 4, 6)  # faces from ~250 px down to ~40 px on the canvas


def sface_inputs(aligned_bgr: Sequence[np.ndarray], flip: bool = True) -> list[np.ndarray]:
    """SFace's input batches (1x3x112x112 float RGB 0..255), mirrors included when ``flip``."""
    batches = []
    for face in aligned_bgr:
        rgb = face[..., ::-1].astype(np.float32)
        views = (rgb, rgb[:, ::-1]) if flip else (rgb,)
        batches += [np.ascontiguousarray(v.transpose(2, 0, 1)[None]) for v in views]
    return batches


def yunet_mosaics(images_bgr: Sequence[np.ndarray], side: int = MOSAIC_SIDE,
                  grids: Sequence[int] = MOSAIC_GRIDS) -> list[np.ndarray]:
    """YuNet's input batches (1x3xSxS float BGR 0..255): the photos tiled k x k on a canvas for
    each k in ``grids`` in turn, so that calibration sees faces of every size a camera shows."""
    batches: list[np.ndarray] = []
    pool = list(images_bgr)
    at = 0
    while pool and at < len(pool):
        for k in grids:
            canvas = np.zeros((side, side, 3), np.uint8)
            cell = side // k
            for row in range(k):
                for col in range(k):
                    image = pool[at % len(pool)]
                    at += 1
                    canvas[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = cv2.resize(
                        image, (cell, cell), interpolation=cv2.INTER_AREA)
            batches.append(np.ascontiguousarray(canvas.transpose(2, 0, 1)[None].astype(np.float32)))
            if at >= len(pool):
                break
    return batches


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(batches)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._items, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:  # pragma: no cover - not called by minmax calibration
        raise NotImplementedError


def quantize_model(src: Path, dst: Path, batches: Sequence[np.ndarray],
                   method: CalibrationMethod = "minmax", keep_float: Sequence[str] = ()) -> None:
    """Write the int8 QDQ copy of the fp32 model ``src`` to ``dst``, calibrated on ``batches``;
    the nodes named in ``keep_float`` stay fp32."""
    from onnxruntime.quantization import CalibrationMethod as Method
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise ModelError(f"{src}: no calibration inputs")
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    methods = {"minmax": Method.MinMax, "percentile": Method.Percentile,
               "entropy": Method.Entropy}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lfr-quantize-") as work:
        tmp, prepared = Path(work) / "model.onnx", Path(work) / "prepared.onnx"
        # Pre-processing folds batch norms into the convolutions before int8 sees them (quantised
        # apart, they cost accuracy) and infers shapes for the quantiser.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        # The calibrator writes its augmented model beside the working file, never in dst's folder.
        cwd = os.getcwd()
        os.chdir(work)
        try:
            quantize_static(
                str(prepared), str(tmp), _Reader(input_name, batches),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method], nodes_to_exclude=list(keep_float),
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        finally:
            os.chdir(cwd)
        onnx.checker.check_model(str(tmp))
        _copy(tmp, dst)


def _copy(src: Path, dst: Path) -> None:
    """Write then rename in ``dst``'s folder, so a crash never leaves half a model there."""
    with tempfile.NamedTemporaryFile(dir=dst.parent, suffix=".tmp", delete=False) as out:
        out.write(src.read_bytes())
    os.replace(out.name, dst)
