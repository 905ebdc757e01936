"""The flip only where it changes a decision.

SFace embeds a face and its mirror and sums them (the flip): TPIR at FPIR 1e-3 on lfw-dev rises
from 0.908 to 0.923 against a flipped watchlist, for twice the embedding work. Most faces score
far from the threshold, where the flip changes nothing: embedded once as they are, they are
embedded again with the mirror only when their best score against the watchlist lies within
``margin`` of the threshold. On `lfr eval identify`'s protocol (bench/flip.py) a margin of 0.05
made every decision the always-flip rule made, for 3.3% of faces embedded twice.

The watchlist stays enrolled with the flip, so this embedder keeps the flip embedder's name: a
bundle built by the flip embedder is the one it is meant for. A deployment builds it
(lfr.pipeline.wiring.build_parts) when the embedder says ``near_threshold_margin`` (SFace's
``[embedder] flip = "near_threshold"``, the default), with the matcher's per-row calibration
offsets (``[matching] crowd_weight``): a face is near when its calibrated score, the one the
matcher compares, is. A running deployment that switches watchlists hands it the new list's rows
and offsets together (``use``): a detector thread embedding at that moment sees the old pair or
the new one, never half of each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lfr.vision.embed import OnnxEmbedder

DEFAULT_MARGIN = 0.05


class Gallery:
    """The watchlist's rows and, per row, what the matcher subtracts from its cosine
    (lfr.matching): one object, replaced whole when the watchlist changes."""

    def __init__(self, vectors: np.ndarray, dim: int, offsets: np.ndarray | None = None) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ValueError(f"gallery of shape {vectors.shape}: expected N x {dim}")
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self.offsets = (np.zeros(len(vectors), np.float32) if offsets is None
                        else np.asarray(offsets, np.float32))
        if self.offsets.shape != (len(vectors),):
            raise ValueError(f"{self.offsets.shape[0] if self.offsets.ndim else 0} offsets for a "
                             f"gallery of {len(vectors)} rows")


class NearThresholdFlip:
    """An embedder (lfr.api.Embedder) over a flip ``OnnxEmbedder`` and the watchlist's rows."""

    def __init__(self, embedder: OnnxEmbedder, gallery: np.ndarray, threshold: float,
                 margin: float = DEFAULT_MARGIN, offsets: np.ndarray | None = None) -> None:
        if not embedder.flip:
            raise ValueError(f"embedder {embedder.name!r}: the watchlist is scored against flip "
                             "embeddings; give the flip embedder")
        self.embedder, self.threshold, self.margin = embedder, threshold, margin
        self.gallery = Gallery(gallery, embedder.dim, offsets)
        self.name, self.dim = embedder.name, embedder.dim
        self.faces = self.flipped = 0  # counts: the share of faces that needed the mirror

    def use(self, gallery: np.ndarray, offsets: np.ndarray | None = None) -> None:
        """Score against another watchlist's rows from the next call on (checked first: a
        ValueError leaves the current rows in use)."""
        self.gallery = Gallery(gallery, self.dim, offsets)

    def embed(self, aligned_bgr: Sequence[np.ndarray]) -> np.ndarray:
        vectors = self.embedder.embed(aligned_bgr, flip=False)
        self.faces += len(vectors)
        gallery = self.gallery  # read once: a switch replaces it whole
        if not len(vectors) or not len(gallery.vectors):
            return vectors
        best = (vectors @ gallery.vectors.T - gallery.offsets).max(axis=1)
        near = np.nonzero(np.abs(best - self.threshold) <= self.margin)[0]
        if near.size:
            vectors[near] = self.embedder.embed([aligned_bgr[int(i)] for i in near], flip=True)
            self.flipped += int(near.size)
        return vectors
