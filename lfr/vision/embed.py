"""SFace (and ArcFace-style) embeddings of aligned 112x112 faces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lfr.vision.onnx import GraphOptimization, create_session


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class OnnxEmbedder:
    """An embedder over aligned faces. SFace wants **RGB** 0..255 (its graph normalises itself);
    feeding BGR costs accuracy, most of all at low false-accept rates.

    ``mean``/``std`` serve ArcFace-style models that expect (x - 127.5) / 127.5.

    ``flip``: embed the mirrored face too and use the sum (one batch of 2N): on lfw-dev, TPIR at
    FPIR 1e-3 with 400 listed people rose from 0.893 to 0.923 (``lfr eval identify``).
    """

    name = "sface"

    def __init__(self, model_path: Path, rgb: bool = True, mean: float = 0.0, std: float = 1.0,
                 threads: int = 1, flip: bool = False, *, name: str = "sface",
                 providers: Sequence[str] | None = None,
                 optimization: GraphOptimization = "all",
                 near_threshold_margin: float | None = None) -> None:
        if near_threshold_margin is not None and not flip:
            raise ValueError("near_threshold_margin: the flip near the threshold needs flip=True")
        self.session = create_session(model_path, threads, providers, optimization)
        self.input_name = self.session.get_inputs()[0].name
        self.rgb, self.mean, self.std, self.flip = rgb, mean, std, flip
        # The name identifies the embedding function (bundles and caches check it): another
        # model file (an int8 one) or the flip makes another function.
        self.name = f"{name}+flip" if flip else name
        # Set: a deployment embeds its cameras' faces through lfr.vision.flip.NearThresholdFlip
        # (the mirror only within this margin of the threshold); enrolment keeps the full flip.
        self.near_threshold_margin = near_threshold_margin
        probe = self.session.run(None, {self.input_name: np.zeros((1, 3, 112, 112), np.float32)})
        self.dim = int(probe[0].shape[-1])

    def embed(self, aligned_bgr: Sequence[np.ndarray], flip: bool | None = None) -> np.ndarray:
        """L2-normalised embeddings (N x dim, float32) of aligned BGR uint8 faces. ``flip``
        overrides the embedder's own setting for this call (lfr.vision.flip embeds most faces
        without their mirror)."""
        flip = self.flip if flip is None else flip
        if not len(aligned_bgr):
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack(aligned_bgr).astype(np.float32)
        if self.rgb:
            batch = batch[..., ::-1]
        if flip:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        batch = ((batch - self.mean) / self.std).transpose(0, 3, 1, 2)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]
        out = l2_normalize(out.reshape(len(batch), -1))
        if flip:
            n = len(aligned_bgr)
            out = l2_normalize(out[:n] + out[n:])
        return out
